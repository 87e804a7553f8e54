"""Firmware bundles uploaded from a technician's laptop: checked, kept on /data, and reported.

Scope: the upload and its status only.  Installing is the update agent's job
(gridedge.firmware.Agent.install_local, called by the page once the file is kept: RAUC verifies
the signature and writes the other slot).  What is checked here is what can be checked cheaply
before a large file is kept: its size (``[web] max_upload``), its name
(``.raucb``) and its type (a RAUC bundle is a SquashFS image, magic ``hsqs``, with its CMS
signature appended and the signature's size in the last 8 bytes, big-endian).  A file that
fails is deleted and the reason shown.

The body arrives in a temporary file (twisted.web spools large bodies to disk), is copied in
chunks to ``DATA_DIR/web/upload/bundle.raucb.part``, fsynced, and renamed: a power cut never
leaves a half bundle under the final name.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from .files import read_json, write_json

__all__ = ["BundleError", "BundleStatus", "BundleStore"]

_MAGIC = b"hsqs"
_CHUNK = 64 * 1024


class BundleError(ValueError):
    """An upload refused; the message is for the page."""


@dataclass(frozen=True, slots=True)
class BundleStatus:
    name: str
    size: int
    sha256: str
    received_at: float
    state: str  #: "received": handed to the update agent (its view says what became of it)


class BundleStore:
    """One bundle at a time, in ``folder``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.path = folder / "bundle.raucb"
        self._status_path = folder / "status.json"

    def status(self) -> BundleStatus | None:
        data: dict[str, Any] | None = read_json(self._status_path, None)
        if data is None or not self.path.exists():
            return None
        return BundleStatus(**data)

    def receive(self, name: str, body: IO[bytes], size: int) -> BundleStatus:
        """Check and keep an uploaded bundle; raises BundleError with the reason."""
        if not name.endswith(".raucb") or "/" in name or len(name) > 200:
            raise BundleError("the file must be a RAUC bundle named *.raucb")
        if size <= 0:
            raise BundleError("the file is empty")
        if size > self.max_bytes:
            raise BundleError(f"the file is {size} bytes; at most {self.max_bytes} are accepted")
        body.seek(0)
        head = body.read(4)
        if head != _MAGIC:
            raise BundleError("not a RAUC bundle (no SquashFS image at its start)")
        body.seek(size - 8)
        (sig_size,) = struct.unpack(">Q", body.read(8))
        if not 0 < sig_size < size - 8:
            raise BundleError("not a signed RAUC bundle (no signature at its end)")
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.folder / "bundle.raucb.part"
        digest = hashlib.sha256()
        body.seek(0)
        with open(part, "wb") as out:
            while chunk := body.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, self.path)
        status = BundleStatus(name, size, digest.hexdigest(), time.time(), "received")
        write_json(self._status_path, asdict(status))
        return status
