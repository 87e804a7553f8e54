"""Real RAUC verity bundles, small, made on the host for the update agent's tests, and the
stand-ins for what a host cannot have: the BeagleBone's two slots and the cloud's end of the
link.

Bundles: a small ext4 made by ``mkfs.ext4 -d`` from a temporary folder, signed by Debian's
``rauc bundle`` (tests/support/qemu_bundle.py) with keys from board/qemu-ci/mk-test-keys.  A
random payload keeps the SquashFS large enough for a two-level verity tree and many chunks.

:class:`FakeSlots` stands for the two slots and the boot loader (``rauc status``/``install``,
reboot): it checks a bundle as ``rauc install`` would, with the real ``rauc info`` against the
keyring and its compatible, and records what was installed.  :class:`FakeCloud` is the cloud
end of one connection (a :class:`gridedge.firmware.Port`): it answers ChunkRequests with the
offer's bytes after a simulated round trip on the test's clock, and can tamper with a chunk.

Tests: a helper of tests/edge/test_firmware_agent.py and tests/edge/test_firmware_verity.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gridedge.firmware import SlotStatus
from gridedge.firmware.rauc import BundleTools, ToolError
from gridwire import ChunkRequest, FirmwareChunk, FirmwareOffer, FirmwareStatus
from twisted.internet import defer
from twisted.internet.task import Clock

from support.qemu_bundle import COMPATIBLE, SigningKeys, start_bundle

CHUNK = 32768


def rootfs(folder: Path, out: Path, files: dict[str, bytes], size: str = "3M") -> Path:
    """An ext4 image of ``size`` holding ``files`` ({relative path: content})."""
    tree = folder / f"{out.name}.tree"
    for name, content in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    fixed = "6f1c1b4e-4c1a-4f5e-9d2a-0a0b0c0d0e0f"  # the same image for the same files
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", fixed, "-E",
                    f"hash_seed={fixed}", "-d", str(tree), str(out), size],
                   check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})
    return out


def bundle(folder: Path, name: str, keys: SigningKeys, version: str, files: dict[str, bytes],
           compatible: str = COMPATIBLE) -> Path:
    """A signed verity bundle installing an ext4 with ``files``."""
    image = rootfs(folder, folder / f"{name}.ext4", files)
    return start_bundle(folder / "bundles" / f"{name}.raucb", image, keys, version=version,
                        compatible=compatible).path()


@dataclass
class Kit:
    """Keys and bundles for a test module."""

    folder: Path
    keys: SigningKeys
    other_keys: SigningKeys
    payload: bytes

    def bundle(self, name: str, version: str, *, extra: bytes = b"",
               keys: SigningKeys | None = None, compatible: str = COMPATIBLE) -> Path:
        files = {"etc/version": version.encode(), "usr/lib/payload": self.payload,
                 "usr/lib/gridedge": b"gridedge " + version.encode() + extra}
        return bundle(self.folder, name, keys or self.keys, version, files, compatible)

    def tools(self) -> BundleTools:
        return BundleTools(self.keys.ca)


def make_kit(folder: Path) -> Kit:
    keys = SigningKeys.make(folder / "keys")
    other = SigningKeys.make(folder / "other-keys")
    return Kit(folder, keys, other, os.urandom(700_000))


def offer_of(blob: bytes, offer_id: int, version: str, *, chunk_size: int = CHUNK,
             base: bytes | None = None, target: bytes | None = None) -> FirmwareOffer:
    """The offer the cloud would make for ``blob`` (a delta when ``base``/``target`` given)."""
    extra = {}
    if base is not None and target is not None:
        extra = {"delta_base": hashlib.sha256(base).digest(), "target_size": len(target),
                 "target_sha256": hashlib.sha256(target).digest()}
    return FirmwareOffer(offer_id=offer_id, version=version, size=len(blob),
                         sha256=hashlib.sha256(blob).digest(), chunk_size=chunk_size, **extra)


@dataclass
class FakeSlots:
    """Two slots A and B and the boot loader.  ``install`` checks as ``rauc install`` does
    (signature against the keyring, compatible) with the real ``rauc info``."""

    tools: BundleTools
    booted: str = "A"
    good: bool = True
    compatible: str = COMPATIBLE
    installed: list[tuple[str, bytes]] = field(default_factory=list)  #: (version, sha256)
    reboots: int = 0
    fail_install: str | None = None

    def status(self) -> defer.Deferred[SlotStatus]:
        return defer.succeed(SlotStatus(self.compatible, self.booted, self.good))

    def install(self, bundle: Path) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._install(bundle))

    async def _install(self, bundle: Path) -> None:
        if self.fail_install:
            raise ToolError(self.fail_install)
        info = await self.tools.info(bundle)
        if info.compatible != self.compatible:
            raise ToolError(f"Compatible mismatch: Expected '{self.compatible}' but bundle "
                            f"manifest has '{info.compatible}'")
        self.installed.append((info.version, hashlib.sha256(bundle.read_bytes()).digest()))

    def reboot(self) -> None:
        self.reboots += 1


class FakeCloud:
    """The cloud end of one connection: answers chunk requests after ``rtt`` seconds."""

    def __init__(self, clock: Clock, blobs: dict[int, bytes], rtt: float = 0.2) -> None:
        self.clock = clock
        self.blobs = blobs
        self.rtt = rtt
        self.idle = True
        self.requests: list[tuple[float, ChunkRequest]] = []
        self.statuses: list[FirmwareStatus] = []
        self.tamper: Callable[[int, int, bytes], bytes] = lambda offer, index, data: data
        self.agent: object = None
        self.answer = True

    def uploads_idle(self) -> bool:
        return self.idle

    def send_message(self, message: ChunkRequest | FirmwareStatus) -> None:
        if isinstance(message, FirmwareStatus):
            self.statuses.append(message)
            return
        self.requests.append((self.clock.seconds(), message))
        if self.answer:
            self.clock.callLater(self.rtt, self._answer, message)

    def _answer(self, request: ChunkRequest) -> None:
        blob = self.blobs[request.offer_id]
        offer_chunk = CHUNK
        data = blob[request.index * offer_chunk:(request.index + 1) * offer_chunk]
        data = self.tamper(request.offer_id, request.index, data)
        self.agent.chunk(FirmwareChunk(offer_id=request.offer_id,  # type: ignore[attr-defined]
                                       index=request.index, data=data))

    def states(self) -> list[str]:
        from gridwire import FirmwareState
        return [FirmwareState(s.state).name for s in self.statuses]
