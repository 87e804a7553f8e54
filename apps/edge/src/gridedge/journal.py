"""The durable journal: interval records wait here until the cloud has committed them.

Why SQLite in WAL mode: one file on the data partition, atomic multi-row
transactions, crash safety proven by decades of power-cut testing, and no
server process on a 512 MB board.

Durability and fsync policy
---------------------------
* ``synchronous=FULL`` (the default): every commit fsyncs the write-ahead log
  before :meth:`Journal.append` returns, so a record the radio link handed over
  survives a power cut from that instant.  ``NORMAL`` in WAL mode fsyncs only at
  checkpoints: the database stays consistent after a power cut but the last
  commits may vanish, which would lose meter readings that nothing will resend;
  it is offered for bench work only.
* Flash wear: the cost is per commit, not per record, so the radio link hands
  over a whole burst in one :meth:`append` call (one transaction, one fsync).
  Acknowledgements delete in one transaction per Ack.  (The link's traffic
  counters share this file but not this code: gridedge.uplink.traffic.)
* ``journal_size_limit`` truncates the WAL after checkpoints so it cannot grow
  without bound after a long offline period.

Sequence numbers
----------------
Readings and events share one sequence space (gridwire's EventReport carries a
journal sequence number, so one cumulative Ack covers both).  Numbers are
assigned at append, consecutive and strictly increasing; the next number is
stored in the ``meta`` table in the same transaction as the records, so a
number is never reused, even after its record is deleted or the journal is
emptied.  Pending records are always one consecutive run: deletions (Ack and
eviction) only ever remove the oldest ones.

Size bound and full disk
------------------------
The database is capped with ``PRAGMA max_page_count`` (from ``max_bytes``).
SQLite reports the cap and a full disk alike (``SQLITE_FULL``), so the journal
tells them apart from what the append needs: when the pages in use plus the
pages the transaction needs reach the cap *and* the file system has room for
those pages, the cap was reached.  Then the oldest entries are evicted in the
same transaction (more on each try until the append fits), counted, and an
EVENT_JOURNAL_EVICTED event (meter_id 0) is journalled for the cloud; the edge
keeps running.  A burst larger than the whole cap keeps its newest records:
the older ones get their sequence numbers and are counted as evicted at once,
so a burst is never refused for ever.  When the *disk* is full (no room on the
file system, or an I/O error such as ``EFBIG``), the append raises
:class:`JournalFullError` with a clear message, nothing already stored is
harmed, and an EVENT_JOURNAL_DISK_FULL event is kept in memory until it can be
written.  The caller (the radio link) keeps the records it could not store and
re-polls them later.

Errors and listeners
--------------------
Every storage failure leaves the journal as one of its own errors
(:class:`JournalError`; :class:`JournalDiskError` when the disk under it
failed), never as a raw ``sqlite3.Error``: its callers (the radio link, the
uplink) handle those and only those.  Listeners (:meth:`Journal.on_append`, the
uplink's pump) run after the transaction is over, and their failures are
logged, never raised: an append that committed must not look failed, or its
caller would store the same records again.

Tests: tests/edge/test_journal.py, tests/edge/test_journal_disk_full.py,
tests/edge/test_journal_faults.py.
"""

from __future__ import annotations

import math
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeAlias

from gridwire import (
    AlarmKind,
    EventReport,
    IntervalRecord,
    ProtocolError,
    RecordColumns,
    event_problem,
    record_problems,
)
from twisted.logger import Logger

from gridedge.radio.sink import SinkError

SCHEMA_VERSION = 1
_MIN_PAGES = 16  # the schema alone needs a handful of pages
_ROW_OVERHEAD = 24  # bytes per entry beyond its body: cell header, rowid, cell pointer, slack
_WAL_FRAME = 24  # bytes of WAL frame header per page written
_TOUCHED_PAGES = 8  # pages a transaction rewrites besides new ones (meta, interior, watermarks)

#: EventReport kinds for the edge's own events (meter_id 0).  gridwire's AlarmKind
#: covers meter alarms; values from 0x8000 up are the edge's own and carried unchanged.
EVENT_JOURNAL_EVICTED = AlarmKind.JOURNAL_EVICTED
EVENT_JOURNAL_DISK_FULL = AlarmKind.JOURNAL_DISK_FULL
EVENT_RECORDS_REFUSED = AlarmKind.RECORDS_REFUSED
EVENT_JOURNAL_QUARANTINED = AlarmKind.JOURNAL_QUARANTINED

_MAX_DETAIL = 255  # bytes of UTF-8 in EventReport.detail (docs/protocol.md)
_READING = struct.Struct("<IIQIHIhH")  # the eight IntervalRecord fields, 30 bytes
_EVENT = struct.Struct("<IQH")  # meter_id, time, kind; the UTF-8 detail follows


class JournalError(SinkError):
    """The journal could not do what was asked; the message says why and what to do.

    A :class:`~gridedge.radio.sink.SinkError`: the radio link keeps the records and retries.
    """


class JournalDiskError(JournalError):
    """The disk under the journal failed (I/O error, damaged file, full): a fault of the data
    partition, not of gridedge."""


class JournalFullError(JournalDiskError):
    """The disk under the journal is full: nothing new can be stored until space is freed."""


class _Unreadable(JournalDiskError):
    """The journal file is not a readable database (it is quarantined, see Journal.open)."""


class JournalClosedError(JournalError):
    """The journal is not open (it is starting, restarting or stopped)."""


@dataclass(frozen=True, slots=True)
class Event:
    """An alarm or edge event for the cloud, journalled like a reading (sent as EventReport)."""

    meter_id: int
    time: int
    kind: int
    detail: str = ""


Entry: TypeAlias = IntervalRecord | Event


@dataclass(frozen=True, slots=True)
class JournalStats:
    """A snapshot for health checks and logs."""

    next_seq: int
    first_pending_seq: int | None
    pending: int
    evicted_total: int
    refused_total: int  #: readings and events refused since start: outside the value ranges
    disk_full: bool
    size_bytes: int
    max_bytes: int


@dataclass(slots=True)
class _Unsaved:
    """What waits in memory for the next transaction: events that could not be written yet
    (full disk)."""

    events: list[Event] = field(default_factory=list)

    def merge(self, other: _Unsaved) -> None:
        self.events.extend(other.events)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, is_event INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    meter_id INTEGER PRIMARY KEY, interval_end INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value)
    VALUES ('schema', 1), ('next_seq', 1), ('evicted_total', 0);
"""


def encode_event(event: Event) -> bytes:
    return _EVENT.pack(event.meter_id, event.time, event.kind) + event.detail.encode()


def decode_entry(is_event: int, body: bytes) -> Entry:
    if is_event:
        meter_id, at, kind = _EVENT.unpack_from(body)
        return Event(meter_id, at, kind, bytes(body[_EVENT.size:]).decode())
    return IntervalRecord._make(_READING.unpack(body))


def _is_full(exc: BaseException) -> bool:
    """SQLite reports its page cap and a full disk as SQLITE_FULL; EFBIG as an I/O error."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return True
    text = str(exc).lower()
    return "disk is full" in text or "no space" in text


def _is_io_error(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) == sqlite3.SQLITE_IOERR


def _is_damaged(exc: BaseException) -> bool:
    """The file is not a readable SQLite database (damaged pages, not a database at all)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _storage_error(exc: sqlite3.Error, message: str) -> JournalError:
    """``exc`` as the journal's own error: a disk fault or something else."""
    if _is_full(exc) or _is_io_error(exc) or _is_damaged(exc):
        return JournalDiskError(f"{message}: {exc}")
    return JournalError(f"{message}: {exc}")


@dataclass(slots=True)
class _Change:
    """One transaction's work, see Journal._transaction."""

    readings: Sequence[bytes] = ()
    watermarks: dict[int, int] = field(default_factory=dict)
    evict: int = 0
    drop: int = 0  # the oldest readings of a burst larger than the cap: numbered, not stored
    ack_up_to: int | None = None
    next_seq_at_least: int = 0
    shift: int = 0


class Journal:
    """Entries waiting for the cloud, in one SQLite file; implements the radio link's RecordSink
    (``append`` durable on return, ``watermarks`` per meter)."""

    log = Logger()

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = path
        self.max_bytes = max_bytes
        self.synchronous = synchronous.upper()
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._page_size = 4096
        self._max_pages = 0
        self._next_seq = 1
        self._first_pending: int | None = None
        self._pending = 0
        self._evicted_total = 0
        self._refused_total = 0
        self._unsaved = _Unsaved()
        self._disk_full = False
        self._listeners: list[Callable[[], None]] = []
        self._inserted = False  # entries stored since the listeners were last told
        self._disk_fault: str | None = None

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) the database; raises JournalError with the reason.

        An unreadable file (damaged pages, not a database) is quarantined: moved aside
        under a timestamped name, kept for recovery, and a new journal is started with
        an EVENT_JOURNAL_QUARANTINED event saying what was kept.  A disk fault that
        prevents even that raises :class:`JournalDiskError` (see :attr:`disk_fault`).
        """
        if self._db is not None:
            return
        try:
            try:
                self._open_db()
            except _Unreadable as exc:
                detail = self._quarantine(exc)
                self._open_db()
                self._unsaved.events.append(Event(
                    0, int(self._clock()), EVENT_JOURNAL_QUARANTINED,
                    detail.encode()[:_MAX_DETAIL].decode(errors="ignore")))
                self.flush()
        except JournalDiskError as exc:
            self._disk_fault = str(exc)
            raise
        self._disk_fault = None

    def _open_db(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
        except PermissionError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        except OSError as exc:
            raise JournalDiskError(f"cannot open journal {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute(f"PRAGMA journal_size_limit={4 * 1024 * 1024}")
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            self._max_pages = max(_MIN_PAGES, self.max_bytes // self._page_size)
            db.execute(f"PRAGMA max_page_count={self._max_pages}")
            db.executescript(_SCHEMA)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta["schema"] != SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path} has schema {meta['schema']}, this gridedge knows "
                    f"{SCHEMA_VERSION}; move the file away to start a new journal"
                )
            first, last, count = db.execute(
                "SELECT MIN(seq), MAX(seq), COUNT(*) FROM entries"
            ).fetchone()
            db.execute("SELECT COUNT(*) FROM watermarks").fetchone()
        except sqlite3.Error as exc:
            db.close()
            if _is_damaged(exc):
                raise _Unreadable(f"journal {self.path} is unreadable: {exc}") from exc
            if _is_full(exc):
                raise JournalFullError(
                    f"cannot open journal {self.path}: disk full ({exc})"
                ) from exc
            raise _storage_error(exc, f"cannot open journal {self.path}") from exc
        except JournalError:
            db.close()
            raise
        self._db = db
        self._next_seq = max(int(meta["next_seq"]), (last or 0) + 1)
        self._first_pending = first
        self._pending = int(count)
        self._evicted_total = int(meta["evicted_total"])
        self.log.info(
            "journal {path} open: {pending} entries pending from seq {first}, next seq {next}",
            path=str(self.path), pending=self._pending, first=first, next=self._next_seq,
        )

    def _quarantine(self, reason: _Unreadable) -> str:
        """Move the unreadable journal (and its WAL) aside; returns what was kept, in words."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        kept = self.path.with_name(f"{self.path.name}.unreadable-{stamp}")
        n = 1
        while kept.exists():
            n += 1
            kept = self.path.with_name(f"{self.path.name}.unreadable-{stamp}-{n}")
        size = 0
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    size += src.stat().st_size if suffix != "-shm" else 0
                    src.rename(f"{kept}{suffix}")
        except OSError as exc:
            raise JournalDiskError(
                f"{reason}; it cannot be moved aside either: {exc}") from exc
        self.log.error(
            "{reason}: moved aside as {kept} ({size} bytes, kept for recovery); "
            "starting a new journal", reason=str(reason), kept=str(kept), size=size)
        return (f"journal unreadable ({reason.__cause__}): kept as {kept.name} ({size} bytes, "
                f"the entries not yet sent included); a new journal started")

    @property
    def disk_fault(self) -> str | None:
        """Why the disk kept the journal from opening, if it did (None once it opens)."""
        return self._disk_fault

    def close(self) -> None:
        """Write what is still in memory (events) and close the database."""
        if self._db is None:
            return
        self.flush()
        self._db.close()
        self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalClosedError(f"journal {self.path} is not open")
        return self._db

    # -- the transaction --------------------------------------------------------------------

    def _transaction(self, change: _Change) -> tuple[int, int]:
        """Apply ``change`` plus everything waiting in memory in one transaction.

        Returns (first sequence number given to ``change.readings``, entries deleted by
        the ack).  On failure the in-memory state is exactly as before and the
        sqlite3.Error propagates.
        """
        db = self._conn()
        unsaved, self._unsaved = self._unsaved, _Unsaved()
        events = list(unsaved.events)
        evicted = change.evict + change.drop
        if evicted:
            events.append(Event(0, int(self._clock()), EVENT_JOURNAL_EVICTED,
                                f"journal full: dropped {evicted} oldest entries "
                                f"({self._evicted_total + evicted} so far)"))
        seq = first = max(self._next_seq, change.next_seq_at_least)
        deleted = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            if change.ack_up_to is not None:
                deleted = db.execute(
                    "DELETE FROM entries WHERE seq <= ?", (change.ack_up_to,)
                ).rowcount
            if change.shift:
                db.execute("UPDATE entries SET seq = seq + ?", (change.shift,))
            if change.evict:
                db.execute(
                    "DELETE FROM entries WHERE seq IN "
                    "(SELECT seq FROM entries ORDER BY seq LIMIT ?)", (change.evict,),
                )
            rows = [(first + i, 0, body) for i, body in enumerate(change.readings)
                    if i >= change.drop]
            seq += len(change.readings)
            for event in events:
                rows.append((seq, 1, encode_event(event)))
                seq += 1
            db.executemany("INSERT INTO entries (seq, is_event, body) VALUES (?, ?, ?)", rows)
            if change.watermarks:
                db.executemany(
                    "INSERT INTO watermarks (meter_id, interval_end) VALUES (?, ?) "
                    "ON CONFLICT (meter_id) DO UPDATE SET "
                    "interval_end = MAX(interval_end, excluded.interval_end)",
                    change.watermarks.items(),
                )
            if seq != self._next_seq:
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
            if evicted:
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted_total'",
                           (evicted,))
            # Read before COMMIT: nothing that can fail may follow it (see "Errors and listeners").
            first_pending = self._first_pending
            if deleted or change.evict or change.shift:
                first_pending = db.execute("SELECT MIN(seq) FROM entries").fetchone()[0]
            elif first_pending is None and rows:
                first_pending = rows[0][0]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error as exc:  # SQLite may have rolled back already (IOERR)
                    self.log.debug("rollback after failure: {error}", error=str(exc))
            unsaved.merge(self._unsaved)
            self._unsaved = unsaved
            raise
        inserted = len(rows)
        self._next_seq = seq
        self._evicted_total += evicted
        self._pending += inserted - deleted - change.evict
        self._first_pending = first_pending
        if inserted:
            self._inserted = True
        return first, deleted

    def _notify(self) -> None:
        """Tell the listeners of new entries, once the transaction is over; a listener's
        failure is logged, never raised (the entries are stored)."""
        if not self._inserted:
            return
        self._inserted = False
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                self.log.failure("journal: a listener failed after new entries were stored")

    # -- the RecordSink side ----------------------------------------------------------------

    def append(self, records: Sequence[IntervalRecord]) -> None:
        """Store ``records`` durably, in one transaction, giving each the next sequence number.

        When this returns the records survive a power cut (with ``synchronous=FULL``).
        Raises :class:`JournalFullError` when the disk is full, :class:`JournalClosedError`
        when the journal is not open; in both cases nothing was stored.
        """
        if not records:
            return
        self._conn()
        for r in records:
            if not isinstance(r, IntervalRecord):
                raise TypeError(f"the journal stores IntervalRecord objects, not {r!r}")
        problems = record_problems(RecordColumns.from_records(records))
        if problems:
            first = min(problems)
            self._refuse(len(problems), f"{len(problems)} reading(s) refused, first meter "
                         f"{records[first].meter_id}: {problems[first]}")
            records = [r for i, r in enumerate(records) if i not in problems]
            if not records:
                self.flush()
                return
        bodies = [_READING.pack(*r) for r in records]
        marks: dict[int, int] = {}
        for r in records:
            if r.interval_end > marks.get(r.meter_id, -1):
                marks[r.meter_id] = r.interval_end
        self._store(_Change(readings=bodies, watermarks=marks), len(bodies))

    def watermarks(self) -> dict[int, int]:
        """meter_id -> interval_end of the newest record ever appended for it (RecordSink).

        Kept in its own table, written in the append's transaction, and never
        deleted by acks or eviction: the radio link relies on it to know what it
        already delivered across restarts.
        """
        try:
            rows = self._conn().execute("SELECT meter_id, interval_end FROM watermarks")
            return {int(m): int(t) for m, t in rows}
        except sqlite3.Error as exc:
            raise _storage_error(exc, f"journal {self.path}: cannot read watermarks") from exc

    def append_event(self, event: Event) -> None:
        """Store an event for the cloud, like :meth:`append` (same errors).

        The detail is cut to the 255 bytes an EventReport carries; fields out of the
        wire's ranges are refused here (ValueError), not when the uplink sends them.
        """
        self.append_events([event])

    def append_events(self, events: Sequence[Event]) -> None:
        """Store several events in one transaction (one fsync), like :meth:`append_event`;
        a ValueError for one of them stores none."""
        checked = []
        for event in events:
            detail = event.detail.encode()[:_MAX_DETAIL].decode(errors="ignore")
            try:
                report = EventReport(seq=1, meter_id=event.meter_id, time=event.time,
                                     kind=event.kind, detail=detail)
            except ProtocolError as exc:
                raise ValueError(f"invalid event {event!r}: {exc}") from None
            problem = event_problem(report)
            if problem is not None:
                self._refuse(1, f"event of kind {event.kind} refused: {problem}")
                self.flush()
                raise ValueError(f"invalid event {event!r}: {problem}")
            checked.append(Event(event.meter_id, event.time, event.kind, detail))
        if not checked:
            return
        self._unsaved.events.extend(checked)
        self._store(_Change(), len(checked))

    def _store(self, change: _Change, count: int) -> None:
        at_cap: bool | None = None  # decided at the first SQLITE_FULL, kept while making room
        while True:
            try:
                self._transaction(change)
                break
            except sqlite3.Error as exc:
                if _is_full(exc):
                    if at_cap is None:
                        at_cap = self._cap_reached(change)
                    if at_cap and self._make_room(change):
                        continue
                self._storage_failed(exc, count)
        self._notify()
        if change.evict or change.drop:
            self.log.warn(
                "journal full ({max_bytes} bytes): dropped the {n} oldest entries "
                "({total} so far) to keep running",
                max_bytes=self.max_bytes, n=change.evict + change.drop,
                total=self._evicted_total,
            )
        if self._disk_full:
            self._disk_full = False
            self.log.info("journal {path} writable again", path=str(self.path))

    def _pages_needed(self, change: _Change) -> int:
        """Pages the new entries of ``change`` take at most (a generous estimate)."""
        body = sum(len(b) + _ROW_OVERHEAD for b in change.readings[change.drop:])
        body += sum(_EVENT.size + len(e.detail.encode()) + _ROW_OVERHEAD
                    for e in self._unsaved.events) + 2 * 256  # and an eviction event
        return math.ceil(body * 1.25 / self._page_size) + 2

    def _cap_reached(self, change: _Change) -> bool:
        """Whether SQLITE_FULL came from our own page cap rather than from the disk.

        The cap: the pages in use plus those ``change`` needs reach it.  Not the disk: the
        file system has room for every page the transaction writes (to the WAL).
        """
        needed = self._pages_needed(change)
        try:
            db = self._conn()
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            unused = int(db.execute("PRAGMA freelist_count").fetchone()[0])
            disk = os.statvfs(self.path.parent)
        except (OSError, sqlite3.Error):
            return False
        if pages - unused + needed < self._max_pages:
            return False
        free = disk.f_bavail * disk.f_frsize
        return free >= (needed + _TOUCHED_PAGES) * (self._page_size + _WAL_FRAME)

    def _make_room(self, change: _Change) -> bool:
        """Grow what ``change`` evicts for the next try; False when nothing is left to drop.

        The oldest pending entries go first; once all of them are evicted, the oldest
        readings of the burst itself (a burst larger than the cap).
        """
        if change.evict < self._pending:
            step = max(len(change.readings) - change.drop, self._pending // 100, 1)
            change.evict = min(self._pending, change.evict + step)
            return True
        if change.drop < len(change.readings):
            step = max(len(change.readings) // 10, 1)
            change.drop = min(len(change.readings), change.drop + step)
            return True
        return False

    def _storage_failed(self, exc: sqlite3.Error, count: int) -> NoReturn:
        if _is_full(exc) or _is_io_error(exc):
            if not self._disk_full:
                self._disk_full = True
                self._unsaved.events.append(Event(
                    0, int(self._clock()), EVENT_JOURNAL_DISK_FULL,
                    f"data partition full: {count} entries could not be stored ({exc})"[:200],
                ))
                self.log.error(
                    "journal {path}: DISK FULL, {n} new entries could not be stored ({error}); "
                    "free space on the data partition",
                    path=str(self.path), n=count, error=str(exc),
                )
            raise JournalFullError(
                f"journal {self.path}: disk full, {count} records not stored ({exc})"
            ) from exc
        raise _storage_error(exc, f"journal {self.path}: append failed") from exc

    def _refuse(self, count: int, why: str) -> None:
        """Count values outside gridwire's value ranges (docs/protocol.md) and tell the cloud:
        stored, they would be set aside there anyway; refused here, they never block."""
        self._refused_total += count
        self.log.warn("journal: {why}", why=why)
        self._unsaved.events.append(Event(0, int(self._clock()), EVENT_RECORDS_REFUSED, why[:200]))

    def on_append(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every append that stored entries; returns its remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- the uplink side --------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def first_pending_seq(self) -> int | None:
        return self._first_pending

    @property
    def pending(self) -> int:
        return self._pending

    def read(self, from_seq: int, limit: int) -> list[tuple[int, Entry]]:
        """Up to ``limit`` pending entries from ``from_seq`` on, in sequence order."""
        try:
            rows = self._conn().execute(
                "SELECT seq, is_event, body FROM entries WHERE seq >= ? ORDER BY seq LIMIT ?",
                (from_seq, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise _storage_error(exc, f"journal {self.path}: cannot read from seq {from_seq}") \
                from exc
        return [(int(seq), decode_entry(is_event, body)) for seq, is_event, body in rows]

    def ack(self, up_to_seq: int) -> int:
        """Forget every entry with sequence <= ``up_to_seq`` (the cloud committed them).

        Returns how many were deleted.  A failure to delete is logged, not raised:
        keeping acknowledged entries only costs a resend the cloud ignores.
        """
        if self._first_pending is None or up_to_seq < self._first_pending:
            return 0
        try:
            deleted = self._transaction(_Change(ack_up_to=up_to_seq))[1]
        except sqlite3.Error as exc:
            self.log.error(
                "journal: could not delete acknowledged entries: {error}", error=str(exc)
            )
            return 0
        self._notify()
        return deleted

    def skip_to(self, seq: int) -> None:
        """Make the next sequence number at least ``seq`` (the cloud has seen higher ones).

        Used when the cloud acknowledges a sequence this journal never issued, e.g.
        after the data partition was wiped: new entries must not reuse numbers the
        cloud would take for duplicates.
        """
        if seq > self._next_seq:
            self._apply(_Change(next_seq_at_least=seq), f"cannot move numbering to {seq}")

    def rebase(self, after_seq: int) -> None:
        """Renumber pending entries to follow ``after_seq``, which this journal never issued.

        The cloud acknowledged ``after_seq`` (Welcome), yet this journal's numbering is
        below it: the data partition was wiped or restored from an old copy.  The
        pending entries are new to the cloud, so they move past ``after_seq`` instead
        of being taken for already-committed duplicates.
        """
        if after_seq < self._next_seq:
            return
        base = self._first_pending if self._first_pending is not None else self._next_seq
        shift = after_seq + 1 - base
        self._apply(_Change(shift=shift, next_seq_at_least=self._next_seq + shift),
                    f"cannot renumber pending entries after {after_seq}")

    def _apply(self, change: _Change, failure: str) -> None:
        """One transaction, its failure raised as the journal's own error."""
        try:
            self._transaction(change)
        except sqlite3.Error as exc:
            raise _storage_error(exc, f"journal {self.path}: {failure}") from exc
        self._notify()

    # -- upkeep ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write events kept in memory (called periodically and at close)."""
        if self._db is None or not self._unsaved.events:
            return
        try:
            self._transaction(_Change())
        except sqlite3.Error as exc:
            self.log.warn(
                "journal: could not save events yet: {error}", error=str(exc)
            )
            return
        self._notify()

    def stats(self) -> JournalStats:
        size = 0
        if self._db is not None:
            try:
                size = int(self._db.execute("PRAGMA page_count").fetchone()[0]) * self._page_size
            except sqlite3.Error:
                size = 0
        return JournalStats(
            next_seq=self._next_seq,
            first_pending_seq=self._first_pending,
            pending=self._pending,
            evicted_total=self._evicted_total,
            refused_total=self._refused_total,
            disk_full=self._disk_full,
            size_bytes=size,
            max_bytes=self.max_bytes,
        )
