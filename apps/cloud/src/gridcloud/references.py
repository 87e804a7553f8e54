"""Each edge's gridwire reference table (protocol version 3) in PostgreSQL (migration 0013).

Why in the database and not in the serve node's memory: a unit reconnects to
whichever node HAProxy picks, and a node may have restarted since; the table
must be what the unit's was when the chain of batches behind it was acknowledged
(gridwire._references explains the agreement).  So the table is loaded at
admission, from the database only (no cache to go stale across nodes), and stored
after each batch of a version 3 connection is committed, as one value, on the
condition that the stored table is the one that batch was coded against:

- the first batch after a Welcome that agreed on table R: stored as_of_seq = R;
- the first batch after a Welcome without references: any (the unit restarted its
  table, so does the cloud);
- every later batch: the connection's previous batch.

A failed condition or write breaks the chain for the rest of the connection (it
keeps working from memory); the unit's next offer is then newer than the stored
table and both ends start empty: a cold batch, never a wrong value.  The write
is not waited for before the Ack: the unit only moves its table forward on the
Ack, so a write that lands late or never at worst makes the stored table older
than the unit's, which the next handshake sees.

:class:`gridcloud.refchain.ReferenceKeeper` is the sans-IO part the connection
drives (what to write and when); :class:`ReferenceStore` runs the two statements.

Tests: tests/cloud/test_cloud_references.py.
"""

from __future__ import annotations

from typing import Any

import psycopg2
from gridwire import ProtocolError, ReferenceTable
from twisted.internet import defer
from twisted.logger import Logger

from .pool import DatabasePool
from .refchain import Stored

__all__ = ["ReferenceStore"]

_LOAD_SQL = "SELECT as_of_seq, body FROM edge_references WHERE edge_id = %s"

_SAVE_SQL = """
INSERT INTO edge_references AS r (edge_id, as_of_seq, meters, body)
VALUES (%(edge_id)s, %(as_of)s, %(meters)s, %(body)s)
ON CONFLICT (edge_id) DO UPDATE
   SET as_of_seq = excluded.as_of_seq, meters = excluded.meters, body = excluded.body,
       updated_at = now()
 WHERE %(expected)s = -1 OR r.as_of_seq = %(expected)s
RETURNING 1
"""

log = Logger(namespace="gridcloud.references")


class ReferenceStore:
    """Loads and stores reference tables on the cloud's connection pool."""

    def __init__(self, pool: DatabasePool) -> None:
        self._pool = pool

    def load(self, edge_id: str) -> defer.Deferred[Stored | None]:
        """The edge's stored table, or None (none stored, or unreadable: logged)."""

        def loaded(rows: list[tuple[Any, ...]]) -> Stored | None:
            if not rows:
                return None
            as_of, body = rows[0]
            try:
                return int(as_of), ReferenceTable.from_bytes(bytes(body))
            except ProtocolError as exc:
                log.warn("edge {edge}: stored reference table unreadable ({why}); "
                         "starting without", edge=edge_id, why=str(exc))
                return None

        rows: defer.Deferred[list[tuple[Any, ...]]] = self._pool.runQuery(_LOAD_SQL, (edge_id,))
        d: defer.Deferred[Stored | None] = rows.addCallback(loaded)
        return d

    def save(
        self, edge_id: str, expected: int, as_of: int, table: ReferenceTable
    ) -> defer.Deferred[bool]:
        """Store ``table`` as of ``as_of`` if the stored one is as of ``expected`` (RESET:
        whatever it is); fires with whether it was stored."""
        params = {"edge_id": edge_id, "as_of": as_of, "meters": len(table),
                  "body": psycopg2.Binary(table.to_bytes()), "expected": expected}
        d: defer.Deferred[bool] = self._pool.runQuery(_SAVE_SQL, params).addCallback(bool)
        return d
