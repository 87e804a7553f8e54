"""Bytes on the cellular link per UTC day: what `gridedge traffic` and the health report show.

Why the uplink owns it: the counts come from the uplink's byte counter
(gridedge.uplink.counting) and answer an uplink question (what does the
metered link cost?).  This is the one API for them: the uplink adds to them,
the health report and `gridedge traffic` read them.

Where they are kept: the ``traffic`` table in the journal's SQLite file on the
data partition, where earlier versions kept it, so a unit's history stays
readable without a migration, and the unit keeps one database to back up
rather than two files (each with its own WAL) on the flash.  The table is the
uplink's alone: the journal never reads or writes it, and this module opens
its own connection (SQLite in WAL mode lets both, and a reader such as
`gridedge traffic`, work side by side).

Flash wear: counts are added in memory and written at most once per
``flush`` (the uplink service flushes once a minute and when it stops), never
per packet, with ``synchronous=NORMAL``: a power cut may lose the last
minute's counts, never the database.  A failed write keeps the counts in
memory for the next try.

Tests: tests/edge/test_traffic.py, tests/edge/test_uplink_tls.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traffic (
    day TEXT PRIMARY KEY, bytes_sent INTEGER NOT NULL, bytes_received INTEGER NOT NULL
);
"""


class TrafficError(Exception):
    """The counters cannot be read; the message says which file and why."""


class Traffic:
    """Per-day byte counters of the link, kept in memory and written by :meth:`flush`."""

    log = Logger()

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._unsaved: dict[str, list[int]] = {}

    def count(self, sent: int = 0, received: int = 0) -> None:
        """Add to today's counters (UTC day); written by the next :meth:`flush`."""
        day = time.strftime("%Y-%m-%d", time.gmtime(self._clock()))
        t = self._unsaved.setdefault(day, [0, 0])
        t[0] += sent
        t[1] += received

    def flush(self) -> None:
        """Write what is counted in memory, in one transaction; on failure keep it for later."""
        if not self._unsaved:
            return
        unsaved, self._unsaved = self._unsaved, {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            try:
                db.execute("PRAGMA journal_mode=WAL").fetchone()
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO traffic (day, bytes_sent, bytes_received) VALUES (?, ?, ?) "
                    "ON CONFLICT (day) DO UPDATE SET "
                    "bytes_sent = bytes_sent + excluded.bytes_sent, "
                    "bytes_received = bytes_received + excluded.bytes_received",
                    [(day, s, r) for day, (s, r) in unsaved.items()],
                )
                db.execute("COMMIT")
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            for day, (s, r) in unsaved.items():
                t = self._unsaved.setdefault(day, [0, 0])
                t[0] += s
                t[1] += r
            self.log.warn("traffic counters not saved yet ({path}): {error}",
                          path=str(self.path), error=str(exc))

    def month_total(self, now: float) -> int:
        """Bytes both ways in the UTC month of ``now`` (written and not yet written)."""
        month = time.strftime("%Y-%m", time.gmtime(now))
        return sum(s + r for day, (s, r) in self.per_day().items() if day.startswith(month))

    def per_day(self) -> dict[str, tuple[int, int]]:
        """Bytes (sent, received) per UTC day, oldest first, including what is not written yet.

        Opens the file read-only: safe while the unit runs.  Raises TrafficError when an
        existing file cannot be read.
        """
        out: dict[str, tuple[int, int]] = {}
        if self.path.exists():
            try:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                try:
                    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                  "AND name = 'traffic'").fetchone():
                        for day, s, r in db.execute(
                                "SELECT day, bytes_sent, bytes_received FROM traffic"):
                            out[day] = (int(s), int(r))
                finally:
                    db.close()
            except sqlite3.Error as exc:
                raise TrafficError(f"cannot read {self.path}: {exc}") from exc
        for day, (s, r) in self._unsaved.items():
            s0, r0 = out.get(day, (0, 0))
            out[day] = (s0 + s, r0 + r)
        return dict(sorted(out.items()))
