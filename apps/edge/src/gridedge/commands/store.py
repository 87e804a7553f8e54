"""The unit's command store: every command it accepted, durable before it says so.

Why a file of its own (``commands.db`` on the data partition, SQLite, WAL,
``synchronous=FULL``): "accepted" means "stored": the unit answers
``CommandResult(ACCEPTED)`` only after the command's row is committed, and
that row is also what makes execution happen once per command id.  The
journal's file is left alone: its sequence space and size bound are about
readings, and commands must not be evicted with them.

The life of a row (``state``):

* ``stored``: accepted, not started.  A second delivery of the same id
  (the cloud did not hear the acceptance) finds the row and changes nothing.
* ``running``: committed just before the action starts (before a relay frame
  goes out).  A row found ``running`` when the store opens was interrupted by a
  crash or a power cut: it is *not* started again (a relay must not switch
  twice); it ends ``failed`` with a reason saying so.
* ``done``: the outcome (``status``, ``reason``) is committed; ``reported``
  turns 1 once the outcome is in the journal (the journal carries it to the
  cloud exactly once).  Outcomes not reported yet are reported at open.

Rows that are done and reported are kept ``keep_days`` (7) so a late duplicate
delivery is still recognised, then pruned at open.

Unit-originated commands (the local page, :meth:`CommandExecutor.submit_local`)
take ids from 2^62 up, counted in ``meta``, so they never meet the cloud's ids.

Tests: tests/edge/test_edge_commands.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from gridedge.sqlitefile import open_durable

#: The first id of a unit-originated command (the cloud's ids stay below it).
LOCAL_BASE = 1 << 62

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of receipt
    id          INTEGER NOT NULL UNIQUE,
    kind        INTEGER NOT NULL,
    meter_id    INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    expires_at  INTEGER NOT NULL,                    -- Unix seconds, 0: never
    origin      TEXT NOT NULL,                       -- 'cloud' or 'local'
    state       TEXT NOT NULL DEFAULT 'stored',      -- stored, running, done
    status      TEXT,                                -- succeeded, failed, expired
    reason      TEXT,
    reported    INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    done_at     REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_local', 0);
"""


class CommandStoreError(Exception):
    """The command store could not do what was asked; the message says why."""


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """One accepted command, as stored."""

    id: int
    kind: int
    meter_id: int
    payload: bytes
    expires_at: int
    origin: str
    state: str = "stored"
    status: str | None = None
    reason: str | None = None

    @property
    def local(self) -> bool:
        return self.id >= LOCAL_BASE


_COLUMNS = "id, kind, meter_id, payload, expires_at, origin, state, status, reason"


class CommandStore:
    """The SQLite file of accepted commands (see the module docstring)."""

    log = Logger()

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, keep_days: float = 7.0
    ) -> None:
        self.path = path
        self._clock = clock
        self._keep = keep_days * 86400
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (creating) the file; rows left ``running`` become failed (interrupted)."""
        if self._db is not None:
            return
        try:
            db = open_durable(self.path, _SCHEMA)
            now = self._clock()
            db.execute("BEGIN IMMEDIATE")
            interrupted = db.execute(
                "UPDATE commands SET state = 'done', status = 'failed', done_at = ?, "
                "reason = 'interrupted by a restart of the unit while executing; not repeated' "
                "WHERE state = 'running'", (now,)).rowcount
            db.execute("DELETE FROM commands WHERE state = 'done' AND reported = 1 "
                       "AND done_at < ?", (now - self._keep,))
            db.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise CommandStoreError(f"cannot open command store {self.path}: {exc}") from exc
        self._db = db
        if interrupted:
            self.log.warn("{n} command(s) were interrupted by a restart: reported failed, "
                          "not repeated", n=interrupted)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise CommandStoreError(f"command store {self.path} is not open")
        return self._db

    def _write(self, what: str, statements: Callable[[sqlite3.Connection], object]) -> object:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            result = statements(db)
            db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise CommandStoreError(f"command store {self.path}: {what}: {exc}") from exc

    # -- receipt ---------------------------------------------------------------------------

    def accept(self, commands: Sequence[StoredCommand]) -> list[bool]:
        """Store ``commands`` in one transaction (one fsync); True for each that is new.

        A command id already stored (a second delivery) is left as it is.
        """
        now = self._clock()

        def insert(db: sqlite3.Connection) -> list[bool]:
            new = []
            for c in commands:
                cur = db.execute(
                    "INSERT OR IGNORE INTO commands (id, kind, meter_id, payload, expires_at, "
                    "origin, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (c.id, c.kind, c.meter_id, c.payload, c.expires_at, c.origin, now))
                new.append(cur.rowcount == 1)
            return new

        result = self._write("accepting commands", insert)
        assert isinstance(result, list)
        return result

    def new_local(self, kind: int, meter_id: int, payload: bytes, expires_at: int) -> int:
        """Store a unit-originated command under the next local id; returns the id."""
        now = self._clock()

        def insert(db: sqlite3.Connection) -> int:
            (n,) = db.execute("SELECT value FROM meta WHERE key = 'next_local'").fetchone()
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'next_local'")
            command_id = LOCAL_BASE + int(n)
            db.execute(
                "INSERT INTO commands (id, kind, meter_id, payload, expires_at, origin, "
                "received_at) VALUES (?, ?, ?, ?, ?, 'local', ?)",
                (command_id, kind, meter_id, payload, expires_at, now))
            return command_id

        result = self._write("storing a local command", insert)
        assert isinstance(result, int)
        return result

    # -- execution -------------------------------------------------------------------------

    def next_stored(self, limit: int = 1) -> list[StoredCommand]:
        """Up to ``limit`` of the oldest commands not started yet."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM commands WHERE state = 'stored' ORDER BY n LIMIT ?",
            (limit,)).fetchall()
        return [StoredCommand(*r) for r in rows]

    def get(self, command_id: int) -> StoredCommand | None:
        row = self._conn().execute(
            f"SELECT {_COLUMNS} FROM commands WHERE id = ?", (command_id,)).fetchone()
        return StoredCommand(*row) if row else None

    def start(self, command_id: int) -> None:
        """Committed before the action begins: from now on it is never started again."""
        self._write("starting a command", lambda db: db.execute(
            "UPDATE commands SET state = 'running' WHERE id = ?", (command_id,)))

    def finish(self, command_id: int, status: str, reason: str) -> None:
        """The outcome, committed (not yet reported)."""
        self.finish_many([(command_id, status, reason)])

    def finish_many(self, outcomes: Sequence[tuple[int, str, str]]) -> None:
        """Outcomes (id, status, reason) of several commands in one transaction."""
        now = self._clock()
        self._write("finishing commands", lambda db: db.executemany(
            "UPDATE commands SET state = 'done', status = ?, reason = ?, done_at = ? "
            "WHERE id = ?", [(status, reason, now, cid) for cid, status, reason in outcomes]))

    def unreported(self, limit: int = 256) -> list[StoredCommand]:
        """Done commands whose outcome is not in the journal yet, oldest first."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM commands WHERE state = 'done' AND reported = 0 "
            "ORDER BY n LIMIT ?", (limit,)).fetchall()
        return [StoredCommand(*r) for r in rows]

    def reported(self, command_ids: Sequence[int]) -> None:
        self._write("marking outcomes reported", lambda db: db.executemany(
            "UPDATE commands SET reported = 1 WHERE id = ?", [(i,) for i in command_ids]))

    def counts(self) -> dict[str, int]:
        """Rows by state, for the health report."""
        rows = self._conn().execute("SELECT state, COUNT(*) FROM commands GROUP BY state")
        return {state: int(n) for state, n in rows}
