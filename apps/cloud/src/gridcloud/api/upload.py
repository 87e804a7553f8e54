"""Where the body of a bundle upload goes while twisted.web receives it: the releases folder.

Why: twisted.web receives a request's whole body before the route runs, into
memory up to 100 kB, else into an anonymous temporary file in ``/tmp``.  A
bundle is hundreds of MiB: it must not be held in memory, should not cross file
systems once received (a copy of 500 MiB on the reactor would stall every
request), and must not fill a disk when someone sends more than allowed.  So the
body of ``POST /v1/releases`` is written, as it arrives, to a named temporary
file in ``<folder>/incoming/`` (:class:`BundleSpool`); an accepted bundle is then
hard-linked to its final name in the same folder, which costs nothing.  Past
``max_bundle_mb`` the spool stops writing (a declared ``Content-Length`` over it
writes nothing at all), keeps counting, and the handler answers 413.

The spooled file is deleted when the request is done with it (closed, or
collected): a failed or refused upload leaves nothing behind.  Only a process
killed mid-upload leaves one; :func:`sweep` removes those a day old when an API
process starts.

Tests: tests/cloud/test_cloud_releases.py.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import IO

#: The route whose body is spooled here.
UPLOAD_PATH = b"/v1/releases"
INCOMING = "incoming"


class BundleSpool:
    """A write-then-read file for one upload body, bounded by ``limit`` bytes."""

    def __init__(self, folder: Path, limit: int, declared: int | None) -> None:
        self.limit = limit
        #: bytes the client sent (all of them, also past the limit)
        self.received = 0
        #: the body is larger than ``limit``: nothing past it was kept
        self.too_large = declared is not None and declared > limit
        self._file: IO[bytes] | None = None
        if not self.too_large:
            incoming = folder / INCOMING
            incoming.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives with the request
                dir=incoming, prefix="upload-", suffix=".raucb")

    @property
    def path(self) -> Path:
        """The spooled file's name (valid until :meth:`close`)."""
        assert self._file is not None
        return Path(self._file.name)

    # -- what twisted.web and gridcloud.api.routes call ------------------------------------

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.too_large:
            return
        if self.received > self.limit:
            self.too_large = True
            self.close()  # frees the disk at once; the rest is only counted
            return
        assert self._file is not None
        self._file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._file is None:
            return 0
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell() if self._file is not None else self.received

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size) if self._file is not None else b""

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # NamedTemporaryFile: also unlinks it
            self._file = None


def spool_for(method: bytes | None, path: bytes | None, folder: Path | None, limit: int,
              declared: int | None) -> BundleSpool | None:
    """The spool of a bundle upload, or None for any other request (twisted.web's default)."""
    if folder is None or method != b"POST" or path is None:
        return None
    if path.split(b"?", 1)[0] != UPLOAD_PATH:
        return None
    return BundleSpool(folder, limit, declared)


def sweep(folder: Path, older_than: float = 86400.0) -> int:
    """Remove upload spools left in ``incoming/`` by killed processes; how many."""
    removed = 0
    limit = time.time() - older_than
    with contextlib.suppress(FileNotFoundError), os.scandir(folder / INCOMING) as entries:
        for entry in entries:
            if entry.name.startswith("upload-") and entry.stat().st_mtime < limit:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed
