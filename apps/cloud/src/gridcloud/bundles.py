"""RAUC bundles as the cloud sees them: verified by ``rauc info``, hashed, diffed by ``zstd``.

Why child processes: checking a CMS signature, hashing hundreds of MiB and making
a ``zstd --patch-from`` delta take from milliseconds to minutes; run in the API
process they would stall every request.  Each runs as a child through Twisted's
process API (``spawnProcess``), so the reactor only reads its output: no thread,
nothing blocking.

- :func:`inspect` runs ``rauc info --keyring=K --output-format=json`` and
  ``sha256sum`` side by side.  RAUC prints the manifest as JSON on stdout and,
  on stderr, ``Verified inline signature by '<subject>'``: the signer.  Any
  failure (bad signature, not a bundle) raises :class:`BundleRefused` with
  RAUC's own words, which the API returns to the uploader.
- :func:`make_delta` cuts the dm-verity hash tree out of the target bundle
  (``dd`` copies the SquashFS, the small tail is appended here), runs
  ``zstd -19 --long=27 --patch-from=BASE`` on that and hashes the result.  The
  format (docs/updates.md, "Deltas"): the patch rebuilds ``squashfs || CMS ||
  u64 BE CMS size``; the unit rebuilds the tree from the SquashFS and the salt
  of the signed manifest and puts it back between them
  (gridedge.firmware.delta).  Why: the tree is new after the first changed
  block and does not compress; cut, the delta is about half the size.

Tests: tests/cloud/test_cloud_releases.py.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

#: zstd settings of every delta (docs/updates.md; the unit decodes with the same --long).
ZSTD_DELTA = ("-19", "--long=27")

_SIGNER = re.compile(r"Verified inline signature by '(.*)'")


class BundleRefused(Exception):
    """Not a bundle the cloud accepts; ``str()`` is the reason (RAUC's, when it said one)."""


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What a verified bundle says about itself."""

    version: str
    compatible: str
    signer: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Output:
    """A finished child process: its exit code and what it wrote."""

    code: int
    stdout: bytes
    stderr: bytes


class _Collect(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred[Output]) -> None:
        self._done = done
        self._out: list[bytes] = []
        self._err: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self._done.callback(Output(code if code is not None else -1,
                                   b"".join(self._out), b"".join(self._err)))


def run(reactor: Any, argv: list[str]) -> defer.Deferred[Output]:
    """Run ``argv`` (no shell) and collect its output; fails only if it cannot be started."""
    done: defer.Deferred[Output] = defer.Deferred()
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
    reactor.spawnProcess(_Collect(done), argv[0], argv, env=env)
    return done


async def sha256(reactor: Any, path: Path) -> str:
    """The file's sha256, hex (``sha256sum`` in a child process)."""
    out = await run(reactor, ["sha256sum", "--", str(path)])
    if out.code != 0:
        raise OSError(f"sha256sum {path}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout.split(b" ", 1)[0].decode()


def _reason(stderr: bytes) -> str:
    """RAUC's error lines (its progress lines start with ``rauc-Message:``)."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    errors = [line for line in lines if line and "rauc-Message" not in line]
    return "; ".join(errors) or "rauc could not read the bundle"


async def inspect(reactor: Any, path: Path, keyring: Path) -> BundleInfo:
    """Verify ``path``'s signature against ``keyring``; its version, compatible, signer, hash."""
    info_d = run(reactor, ["rauc", "info", f"--keyring={keyring}", "--output-format=json",
                           str(path)])
    hash_d = defer.ensureDeferred(sha256(reactor, path))
    info = await info_d
    digest = await hash_d
    if info.code != 0:
        raise BundleRefused(_reason(info.stderr))
    try:
        manifest = json.loads(info.stdout)
        version, compatible = manifest["version"], manifest["compatible"]
    except (ValueError, KeyError, TypeError):
        raise BundleRefused("rauc info printed no manifest") from None
    if not isinstance(version, str) or not version:
        raise BundleRefused("the manifest has no [update] version")
    if not isinstance(compatible, str) or not compatible:
        raise BundleRefused("the manifest has no [update] compatible")
    found = _SIGNER.search(info.stderr.decode(errors="replace"))
    if found is None:  # rauc verified it (exit 0) but did not say by whom
        raise BundleRefused("rauc did not report the signer")
    return BundleInfo(version, compatible, found.group(1), path.stat().st_size, digest)


@dataclass(frozen=True, slots=True)
class Delta:
    """A made delta: its size and sha256."""

    size: int
    sha256: str


#: dm-verity's block, and hashes per block of the tree (32-byte sha256).
VERITY_BLOCK = 4096
_PER_BLOCK = VERITY_BLOCK // 32
#: A RAUC CMS signature is a few KiB; more is not a bundle's tail.
MAX_CMS = 1 << 20


def _tree_blocks(data_blocks: int) -> int:
    """Blocks of the hash tree of ``data_blocks`` blocks (every level, to the 1-block top)."""
    total, n = 0, data_blocks
    while True:
        n = -(-n // _PER_BLOCK)
        total += n
        if n == 1:
            return total


def squashfs_size(body: int) -> int:
    """The SquashFS's size in a verity bundle whose SquashFS and tree take ``body`` bytes:
    the one block count d with d + tree(d) blocks = body (d + tree(d) grows strictly with d,
    so there is at most one).  BundleRefused when none fits: not a verity bundle."""
    blocks, rest = divmod(body, VERITY_BLOCK)
    if rest == 0 and blocks >= 2:
        for data in range(max(1, blocks - _tree_blocks(blocks)), blocks):
            if data + _tree_blocks(data) == blocks:
                return data * VERITY_BLOCK
    raise BundleRefused(f"{body} bytes before the signature are not a SquashFS and its "
                        "verity hash tree")


async def cut_tree(reactor: Any, bundle: Path, out: Path) -> None:
    """``out`` := ``bundle`` without its hash tree: ``squashfs || CMS || size``."""
    size = bundle.stat().st_size
    with bundle.open("rb") as f:
        f.seek(max(0, size - 8))
        (cms_size,) = struct.unpack(">Q", f.read(8).rjust(8, b"\0"))
        if not 0 < cms_size <= min(MAX_CMS, size - 8):
            raise BundleRefused(f"signature size {cms_size} does not fit a {size}-byte bundle")
        f.seek(size - 8 - cms_size)
        tail = f.read()
    squashfs = squashfs_size(size - 8 - cms_size)
    copied = await run(reactor, ["dd", f"if={bundle}", f"of={out}", "bs=1M",
                                 f"count={squashfs}", "iflag=count_bytes", "status=none"])
    if copied.code != 0:
        raise OSError(f"dd: {copied.stderr.decode(errors='replace').strip()}")
    with out.open("ab") as f:
        f.write(tail)


async def make_delta(reactor: Any, base: Path, target: Path, out: Path) -> Delta:
    """``out`` := the delta from ``base`` to ``target``: the zstd patch that rebuilds
    ``target`` without its hash tree (the format: module docstring)."""
    part = out.with_name(out.name + ".part")
    cut = out.with_name(out.name + ".target")
    try:
        await cut_tree(reactor, target, cut)
        result = await run(reactor, ["zstd", "-q", "-f", *ZSTD_DELTA, f"--patch-from={base}",
                                     str(cut), "-o", str(part)])
        if result.code != 0:
            raise OSError(f"zstd: {result.stderr.decode(errors='replace').strip()}")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        cut.unlink(missing_ok=True)
    os.replace(part, out)
    return Delta(out.stat().st_size, await sha256(reactor, out))
