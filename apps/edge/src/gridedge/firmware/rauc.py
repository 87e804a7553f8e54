"""RAUC, zstd and sha256sum as the agent uses them, run through Twisted's process API.

Why two parts: :class:`BundleTools` only reads bundles (``rauc info`` checks a signature
against the keyring, ``zstd --patch-from`` and the hash tree put back rebuild a bundle from
a delta, ``sha256sum`` hashes a large file without blocking the reactor); it runs the same
on a build host, and the tests use it as it is.  :class:`Slots` is the part that needs the
unit's boot loader and rauc service (``rauc status``, ``rauc install``, reboot): the real
one is :class:`RaucSlots`; tests stand in for a BeagleBone's two slots with a fake behind
the same interface.

Every failure becomes an exception whose message is the tool's own reason (its last line of
error output), short enough for a FirmwareStatus detail.

Tests: tests/edge/test_firmware_verity.py, tests/edge/test_firmware_agent.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.utils import getProcessOutputAndValue

from gridedge.firmware.delta import DeltaError, insert_tree

__all__ = ["BundleInfo", "BundleRefused", "BundleTools", "RaucSlots", "SlotStatus", "Slots",
           "ToolError"]


class ToolError(Exception):
    """A tool failed; the message is its reason."""


class BundleRefused(ToolError):
    """``rauc info`` refused the bundle (signature, format); the message is rauc's reason."""


@dataclass(frozen=True, slots=True)
class BundleInfo:
    compatible: str
    version: str
    signer: str


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """What the agent needs from ``rauc status``."""

    compatible: str
    booted: str  #: boot name of the running slot ("A", "B")
    good: bool   #: the running slot is marked good


def _reason(stderr: bytes, fallback: str) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()
             if line.strip() and not line.startswith(("rauc-Message", "rauc-Warning"))]
    return (lines[-1] if lines else fallback)[:200]


def program(name: str) -> str:
    """The program ``name`` on PATH (the unit has them in /usr/bin; BusyBox's sha256sum)."""
    return shutil.which(name) or f"/usr/bin/{name}"


async def run(argv: Sequence[str]) -> tuple[bytes, bytes]:
    """Run ``argv``; its (stdout, stderr); ToolError with its reason when it exits non-zero."""
    from twisted.internet import reactor
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    try:
        out, err, code = await getProcessOutputAndValue(  # type: ignore[no-untyped-call]
            argv[0], list(argv[1:]), env=env, reactor=reactor)
    except OSError as exc:
        raise ToolError(f"{argv[0]}: {exc}") from None
    if code != 0:
        raise ToolError(_reason(err, f"{argv[0]} exited with {code}"))
    return out, err


class BundleTools:
    """Reading bundles: signature, delta rebuild, hash."""

    def __init__(self, keyring: Path) -> None:
        self.keyring = keyring
        self._rauc = program("rauc")
        self._zstd = program("zstd")
        self._sha256sum = program("sha256sum")

    def info(self, bundle: Path) -> defer.Deferred[BundleInfo]:
        """The signed manifest's compatible and version; BundleRefused with rauc's reason."""
        return defer.Deferred.fromCoroutine(self._info(bundle))

    async def _info(self, bundle: Path) -> BundleInfo:
        try:
            out, err = await run([self._rauc, "info", f"--keyring={self.keyring}",
                                  "--output-format=json", str(bundle)])
        except ToolError as exc:
            raise BundleRefused(str(exc)) from None
        try:
            data = json.loads(out)
            compatible, version = str(data["compatible"]), str(data["version"])
        except (ValueError, KeyError, TypeError):
            raise BundleRefused("rauc info printed no manifest") from None
        signer = ""
        for line in err.decode("utf-8", "replace").splitlines():
            if "signature by" in line:
                signer = line.split("signature by", 1)[1].strip().strip("'")
        return BundleInfo(compatible, version, signer)

    def patch(self, base: Path, patch: Path, out: Path) -> defer.Deferred[None]:
        """Rebuild ``out`` from ``base`` and a delta ``patch``: ``zstd -d --patch-from``,
        then the hash tree put back (:mod:`gridedge.firmware.delta`)."""
        return defer.Deferred.fromCoroutine(self._patch(base, patch, out))

    async def _patch(self, base: Path, patch: Path, out: Path) -> None:
        await run([self._zstd, "-d", "-q", "-f", "--long=27", f"--patch-from={base}",
                   str(patch), "-o", str(out)])
        try:  # the output is the bundle without its hash tree: put the tree back
            await task.cooperate(insert_tree(out)).whenDone()
        except (DeltaError, OSError) as exc:
            raise ToolError(str(exc)) from None

    def sha256(self, path: Path) -> defer.Deferred[str]:
        return defer.Deferred.fromCoroutine(self._sha256(path))

    async def _sha256(self, path: Path) -> str:
        out, _ = await run([self._sha256sum, str(path)])
        return out.split()[0].decode()


class Slots(Protocol):
    """The unit's A/B slots (RAUC and the boot loader)."""

    def status(self) -> defer.Deferred[SlotStatus]:
        """The running slot and whether it is marked good; ToolError when rauc cannot say."""

    def install(self, bundle: Path) -> defer.Deferred[None]:
        """Install ``bundle`` into the other slot; ToolError with rauc's reason."""

    def reboot(self) -> None:
        """Stop cleanly and reboot (into the slot the boot loader now prefers)."""


def parse_status(data: Any) -> SlotStatus:
    """``rauc status --output-format=json`` -> SlotStatus (ToolError when it is not that)."""
    try:
        booted = str(data["booted"])
        good = False
        for slot in data["slots"]:
            for info in slot.values():
                if info.get("bootname") == booted and info.get("class") == "rootfs":
                    good = info.get("boot_status") == "good"
        return SlotStatus(str(data["compatible"]), booted, good)
    except (KeyError, TypeError, AttributeError):
        raise ToolError("rauc status printed no slots") from None


#: Written by the firmware's mark-good script once it marked the running slot good, this boot
#: (board/common/rootfs-overlay/usr/libexec/gridedge/mark-good).
SLOT_GOOD = Path("/run/gridedge/slot-good")


class RaucSlots:
    """The real slots: rauc's D-Bus service, and the unit's clean reboot.

    "Good" needs both ``rauc status`` saying so and mark-good's ``slot_good`` file: with the
    U-Boot backend RAUC reports a slot good while it has boot attempts left (measured on the
    CI image: a fresh boot shows ``boot_status: good`` before mark-good ran), which a slot on
    trial also has."""

    def __init__(self, reboot: Callable[[], None], slot_good: Path = SLOT_GOOD) -> None:
        self._reboot = reboot
        self._rauc = program("rauc")
        self._slot_good = slot_good

    def status(self) -> defer.Deferred[SlotStatus]:
        return defer.Deferred.fromCoroutine(self._status())

    async def _status(self) -> SlotStatus:
        out, _ = await run([self._rauc, "status", "--detailed", "--output-format=json"])
        try:
            status = parse_status(json.loads(out))
        except ValueError:
            raise ToolError("rauc status printed no JSON") from None
        if status.good and not self._slot_good.exists():
            return SlotStatus(status.compatible, status.booted, False)
        return status

    def install(self, bundle: Path) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._install(bundle))

    async def _install(self, bundle: Path) -> None:
        await run([self._rauc, "install", str(bundle)])

    def reboot(self) -> None:
        self._reboot()
