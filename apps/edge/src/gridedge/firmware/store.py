"""The firmware agent's files on the data partition: a download that survives power cuts,
the delta base, and what is owed after a reboot.

Why these rules: a unit on a 2G link may need days of link time for one bundle, and it loses
power and link at any moment.  Layout (``DATA_DIR/firmware/``, docs/updates.md):

* ``download.json``: the offer being fetched (id, version, sizes, hashes, delta or not) and
  the chunks done, as a hex bitmap (small: rewritten after every chunk);
* ``download.part``: the blob, preallocated at ``begin`` (the room is taken at once, so a
  full /data is found before the download, not after it); a chunk is written at its offset
  and fsynced *before* the bitmap says it is done, and the bitmap is replaced atomically
  (write, fsync, rename).  A power cut therefore loses at most the chunk being written: a torn
  chunk is never marked done and is fetched again;
* ``base.raucb`` + ``base.json``: the bundle this unit runs, kept as the base of deltas
  (a factory unit has none); ``installed.raucb`` + ``installed.json``: a bundle installed
  and not yet healthy, which becomes the base once it is;
* ``pending.json``: installed, rebooting into version V for offer O;
* ``outcomes.json``: the final outcome of recent offers (healthy, rolled back, rejected), so
  a re-offer the cloud makes because it missed the report is answered, not fetched again;
* ``last-failure.txt``: written by the firmware's mark-good script before it reboots an
  unhealthy slot (board/common/rootfs-overlay/usr/libexec/gridedge/mark-good).

Tests: tests/edge/test_firmware_store.py, tests/edge/test_firmware_agent.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gridwire import FirmwareOffer

__all__ = ["Download", "DownloadStore"]

#: outcomes kept in outcomes.json (the oldest go first)
_OUTCOMES_KEPT = 16


@dataclass(frozen=True, slots=True)
class Download:
    """The offer being fetched and the chunks stored so far."""

    offer_id: int
    version: str
    size: int
    sha256: str
    chunk_size: int
    delta_base: str | None = None
    target_size: int = 0
    target_sha256: str | None = None
    done: str = ""  #: hex bitmap, chunk i is bit i (LSB first in each byte)
    fetches: dict[str, int] = field(default_factory=dict)  #: re-fetches per chunk ("i": n)

    @classmethod
    def of(cls, offer: FirmwareOffer) -> Download:
        return cls(offer.offer_id, offer.version, offer.size, offer.sha256.hex(),
                   offer.chunk_size,
                   offer.delta_base.hex() if offer.delta_base is not None else None,
                   offer.target_size,
                   offer.target_sha256.hex() if offer.target_sha256 is not None else None)

    def same_offer(self, offer: FirmwareOffer) -> bool:
        """True when ``offer`` is the one this download fetches (a re-offer after a cut)."""
        mine = replace(self, done="", fetches={})
        return mine == Download.of(offer)

    @property
    def is_delta(self) -> bool:
        return self.delta_base is not None

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def span(self, index: int) -> tuple[int, int]:
        """Offset and length of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def _bits(self) -> bytearray:
        bits = bytearray.fromhex(self.done) if self.done else bytearray()
        need = -(-self.chunk_count // 8)
        return bits + bytearray(need - len(bits))

    def has(self, index: int) -> bool:
        return bool(self._bits()[index // 8] >> (index % 8) & 1)

    def marked(self, index: int, on: bool = True) -> Download:
        bits = self._bits()
        if on:
            bits[index // 8] |= 1 << (index % 8)
        else:
            bits[index // 8] &= ~(1 << (index % 8)) & 0xFF
        return replace(self, done=bits.hex())

    @property
    def received(self) -> int:
        """Bytes stored so far."""
        return sum(self.span(i)[1] for i in range(self.chunk_count) if self.has(i))

    def missing(self) -> list[int]:
        return [i for i in range(self.chunk_count) if not self.has(i)]


def write_json(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON: write, fsync, rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, default: Any) -> Any:
    """The JSON in ``path``; ``default`` when absent or damaged (a file from a torn write
    of an older version: the state is then rebuilt, never trusted)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError):
        return default


class DownloadStore:
    """The files of ``folder`` (``DATA_DIR/firmware``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = folder / "download.json"
        self.part = folder / "download.part"
        self.base = folder / "base.raucb"
        self.installed = folder / "installed.raucb"
        self.rebuilt = folder / "rebuilt.raucb"
        self.pending_path = folder / "pending.json"
        self.last_failure = folder / "last-failure.txt"
        self._outcomes = folder / "outcomes.json"

    # -- the download ------------------------------------------------------------------------

    def current(self) -> Download | None:
        """The download in progress, or None (none, or its files do not agree: discarded)."""
        data: dict[str, Any] | None = read_json(self.meta, None)
        if data is None:
            if self.meta.exists() or self.part.exists():
                self.discard()  # damaged, or a part without its state: start over
            return None
        try:
            download = Download(**data)
            ok = self.part.stat().st_size == download.size
        except (TypeError, OSError):
            ok = False
        if not ok:
            self.discard()
            return None
        return download

    def room_needed(self, offer: FirmwareOffer, min_free: int) -> int | None:
        """Bytes missing on /data to take ``offer`` (0 or less: it fits), counting the blob,
        the rebuilt bundle of a delta, and ``min_free`` kept for the rest of the unit."""
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        with contextlib.suppress(OSError):
            free += self.part.stat().st_blocks * 512  # a download to replace counts as free
        need = offer.size + (offer.target_size if offer.is_delta else 0) + min_free
        return need - free

    def begin(self, offer: FirmwareOffer) -> Download:
        """Forget any earlier download and make room for this one (OSError: no room)."""
        self.discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, offer.size)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.part.unlink(missing_ok=True)
            raise
        os.close(fd)
        download = Download.of(offer)
        self.save(download)
        return download

    def save(self, download: Download) -> None:
        write_json(self.meta, asdict(download))

    def write_chunk(self, download: Download, index: int, data: bytes) -> Download:
        """Store chunk ``index`` durably, then mark it done."""
        offset, length = download.span(index)
        if len(data) != length:
            raise ValueError(f"chunk {index} has {len(data)} bytes, expected {length}")
        fd = os.open(self.part, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        done = download.marked(index)
        self.save(done)
        return done

    def read(self, offset: int, length: int) -> bytes:
        with open(self.part, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def discard(self) -> None:
        for path in (self.meta, self.part, self.rebuilt):
            path.unlink(missing_ok=True)

    # -- the delta base ----------------------------------------------------------------------

    def base_sha256(self) -> str | None:
        """The sha256 of ``base.raucb`` as recorded when it was kept, or None."""
        data: dict[str, Any] | None = read_json(self.folder / "base.json", None)
        if data is None or not self.base.exists():
            return None
        return str(data["sha256"])

    def keep_installed(self, bundle: Path, version: str, sha256: str) -> None:
        """``bundle`` is installed: keep it (moved) until its slot proves healthy."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(bundle, self.installed)
        write_json(self.folder / "installed.json", {"version": version, "sha256": sha256})

    def promote_installed(self) -> None:
        """The installed bundle runs healthy: it is the base of the next delta."""
        data = read_json(self.folder / "installed.json", None)
        if data is None or not self.installed.exists():
            return
        os.replace(self.installed, self.base)
        write_json(self.folder / "base.json", data)
        (self.folder / "installed.json").unlink(missing_ok=True)

    def drop_installed(self) -> None:
        """The installed bundle was rolled back: the old base still matches the running slot."""
        self.installed.unlink(missing_ok=True)
        (self.folder / "installed.json").unlink(missing_ok=True)

    # -- across reboots ----------------------------------------------------------------------

    def pending(self) -> dict[str, Any] | None:
        value: dict[str, Any] | None = read_json(self.pending_path, None)
        return value

    def set_pending(self, value: dict[str, Any]) -> None:
        write_json(self.pending_path, value)

    def clear_pending(self) -> None:
        self.pending_path.unlink(missing_ok=True)

    def failure_reason(self) -> str:
        """What mark-good wrote before rebooting an unhealthy slot ("" if nothing)."""
        try:
            return self.last_failure.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def outcome(self, offer_id: int) -> tuple[int, str] | None:
        """The final (state, detail) reported for ``offer_id``, if any."""
        outcomes: dict[str, list[Any]] = read_json(self._outcomes, {})
        value = outcomes.get(str(offer_id))
        return (int(value[0]), str(value[1])) if value else None

    def remember(self, offer_id: int, state: int, detail: str) -> None:
        outcomes: dict[str, list[Any]] = read_json(self._outcomes, {})
        outcomes.pop(str(offer_id), None)
        outcomes[str(offer_id)] = [state, detail]
        while len(outcomes) > _OUTCOMES_KEPT:
            outcomes.pop(next(iter(outcomes)))
        write_json(self._outcomes, outcomes)
