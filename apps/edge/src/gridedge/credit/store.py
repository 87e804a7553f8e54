"""The unit's prepaid allowances on the data partition: ``credit.db`` (SQLite, FULL sync).

Why durable and why a file of its own: the countdown must survive a power cut in the
middle of a two-day outage of the link (an allowance forgotten would leave a meter
without limit, a count forgotten would give energy away), and it belongs neither to the
journal (bounded, evicts) nor to the command store (a command's life, not a meter's).

One row per prepaid meter (:class:`~gridedge.credit.countdown.MeterCredit`), plus
``pending``: a relay action decided and committed but not yet handed to the command
executor (a crash between the two: it is handed over at the next start).

Tests: tests/edge/test_edge_credit.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from gridedge.sqlitefile import open_durable

from .countdown import MeterCredit

__all__ = ["CreditStore", "CreditStoreError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS allowances (
    meter_id     INTEGER PRIMARY KEY,
    generation   INTEGER NOT NULL,
    allowance_wh INTEGER NOT NULL,
    anchor_end   INTEGER NOT NULL,
    anchor_wh    INTEGER NOT NULL,
    valid_until  INTEGER NOT NULL,
    last_end     INTEGER NOT NULL,
    last_wh      INTEGER NOT NULL,
    used_wh      INTEGER NOT NULL,
    opened       INTEGER NOT NULL,
    pending      TEXT                   -- 'relay_open' / 'relay_close' not handed over yet
);
"""
_COLUMNS = ("meter_id, generation, allowance_wh, anchor_end, anchor_wh, valid_until, "
            "last_end, last_wh, used_wh, opened")


class CreditStoreError(Exception):
    """credit.db could not be read or written; the message says why."""


class CreditStore:
    """The SQLite file of allowances (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self._db is not None:
            return
        try:
            db = open_durable(self.path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CreditStoreError(f"cannot open {self.path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def load(self) -> tuple[dict[int, MeterCredit], dict[int, str]]:
        """Every meter's state, and the relay actions still to hand over."""
        db = self._conn()
        rows = db.execute(f"SELECT {_COLUMNS}, pending FROM allowances").fetchall()
        states = {}
        for r in rows:
            m, g, wh, end, anchor, valid, last_end, last_wh, used = (int(v) for v in r[:9])
            states[m] = MeterCredit(m, g, wh, end, anchor, valid, last_end, last_wh, used,
                                    bool(r[9]))
        return states, {r[0]: r[10] for r in rows if r[10]}

    def save(self, states: Iterable[MeterCredit], pending: dict[int, str] | None = None) -> None:
        """Write ``states`` (and the relay actions decided for them) in one transaction."""
        pending = pending or {}
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                f"INSERT OR REPLACE INTO allowances ({_COLUMNS}, pending) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.meter_id, s.generation, s.allowance_wh, s.anchor_end, s.anchor_wh,
                  s.valid_until, s.last_end, s.last_wh, s.used_wh, int(s.opened),
                  pending.get(s.meter_id)) for s in states])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise CreditStoreError(f"{self.path}: {exc}") from exc

    def handed_over(self, meter_id: int) -> None:
        """The pending relay action of ``meter_id`` is in the command store now."""
        try:
            self._conn().execute("UPDATE allowances SET pending = NULL WHERE meter_id = ?",
                                 (meter_id,))
        except sqlite3.Error as exc:
            raise CreditStoreError(f"{self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise CreditStoreError(f"{self.path} is not open")
        return self._db
