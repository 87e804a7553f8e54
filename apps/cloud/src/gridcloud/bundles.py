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
- :func:`make_delta` runs ``zstd -19 --long=27 --patch-from=BASE TARGET``
  (the unit rebuilds the bundle with ``zstd -d --long=27 --patch-from=BASE``)
  and hashes the result.

Tests: tests/cloud/test_cloud_releases.py.
"""

from __future__ import annotations

import json
import os
import re
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


async def make_delta(reactor: Any, base: Path, target: Path, out: Path) -> Delta:
    """``out`` := the zstd patch that rebuilds ``target`` from ``base``."""
    part = out.with_name(out.name + ".part")
    result = await run(reactor, ["zstd", "-q", "-f", *ZSTD_DELTA, f"--patch-from={base}",
                                 str(target), "-o", str(part)])
    if result.code != 0:
        part.unlink(missing_ok=True)
        raise OSError(f"zstd: {result.stderr.decode(errors='replace').strip()}")
    os.replace(part, out)
    return Delta(out.stat().st_size, await sha256(reactor, out))
