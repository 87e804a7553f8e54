"""Where the radio link delivers interval records: the RecordSink interface and two sinks.

The contract that makes delivery exactly-once (docs/radio.md, "Delivery"):

* ``append(records)`` is synchronous and the records are durable when it
  returns.  The radio link considers a record delivered only then; a record
  whose append raised is kept by the link and offered again later.  A sink
  raises :class:`SinkError` for conditions it expects (a full disk, closed
  while restarting): the link then logs the outage once, not every retry.
* For each meter the link appends records in strictly increasing
  ``interval_end`` order and never one at or below that meter's watermark.
* ``watermarks()`` returns, per meter, the ``interval_end`` of the newest
  record ever appended.  It must survive restarts and must not go back when
  records are later uploaded and deleted, so the sink stores it in the same
  transaction as the records.  The link reads it once at start to know what it
  already delivered: that is all it needs, because records arrive in order.

The production sink is the edge journal (gridedge.journal); :class:`MemorySink`
serves unit tests and :class:`SQLiteSink` the radio monitor tool
(``python -m gridedge.radio``), integration tests and benchmarks.

Tests: tests/radio/test_link.py, tests/radio/test_end_to_end.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from gridradio import IntervalRecord

__all__ = ["MemorySink", "RecordSink", "SQLiteSink", "SinkError"]


class SinkError(Exception):
    """The sink cannot store records now, for a known reason the message gives (not a bug).

    The radio link keeps the records and retries; it logs one line when storing
    starts failing and one when it works again, without a traceback, since the
    reason (e.g. a full disk) is already in the message.
    """


@runtime_checkable
class RecordSink(Protocol):
    """Durable destination of interval records (see the module docstring for the contract)."""

    def append(self, records: Sequence[IntervalRecord]) -> None:
        """Store ``records`` durably before returning; raise if they could not be stored."""

    def watermarks(self) -> Mapping[int, int]:
        """meter_id -> interval_end of the newest record ever appended for it."""


class MemorySink:
    """Keeps everything in lists: for tests, where durability means "in this process"."""

    def __init__(self) -> None:
        self.records: list[IntervalRecord] = []
        self._watermarks: dict[int, int] = {}
        self.appends = 0

    def append(self, records: Sequence[IntervalRecord]) -> None:
        self.appends += 1
        self.records.extend(records)
        for record in records:
            self._watermarks[record.meter_id] = record.interval_end

    def watermarks(self) -> Mapping[int, int]:
        return dict(self._watermarks)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    meter_id INTEGER NOT NULL,
    interval_end INTEGER NOT NULL,
    energy_wh INTEGER NOT NULL,
    max_demand_w INTEGER NOT NULL,
    voltage_dv INTEGER NOT NULL,
    current_ma INTEGER NOT NULL,
    power_factor INTEGER NOT NULL,
    flags INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    meter_id INTEGER PRIMARY KEY,
    interval_end INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SQLiteSink:
    """An append-only SQLite log of records with the watermark table beside it.

    Deliberately keeps duplicates if it were ever handed any (no unique key on
    meter and interval), so tests can prove that the link never sends one.
    ``synchronous`` defaults to FULL (durable against power loss); tests and
    benchmarks may pass "NORMAL" (durable against a process crash).
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def append(self, records: Sequence[IntervalRecord]) -> None:
        if not records:
            return
        marks: dict[int, int] = {}
        for record in records:
            marks[record.meter_id] = record.interval_end
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO records (meter_id, interval_end, energy_wh, max_demand_w,"
                " voltage_dv, current_ma, power_factor, flags) VALUES (?,?,?,?,?,?,?,?)",
                records,
            )
            db.executemany(
                "INSERT INTO watermarks VALUES (?, ?) ON CONFLICT (meter_id)"
                " DO UPDATE SET interval_end = max(interval_end, excluded.interval_end)",
                marks.items(),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def watermarks(self) -> Mapping[int, int]:
        return dict(self._db.execute("SELECT meter_id, interval_end FROM watermarks"))

    def count(self) -> int:
        """Number of records stored (duplicates included)."""
        row = self._db.execute("SELECT count(*) FROM records").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._db.close()
