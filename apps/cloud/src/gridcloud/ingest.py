"""Writing what edges send into PostgreSQL, through a txpostgres connection pool.

Why this shape:

- One batch = one call of the ``ingest_batch()`` SQL function (migration 0001):
  one round trip, one transaction (psycopg2's asynchronous connections run every
  statement in its own transaction), a multi-row insert from ``unnest`` of
  parallel arrays.  The caller acknowledges the batch only once the returned
  Deferred fires, which is after COMMIT.
- Exactly once on (edge, seq): the function keeps a per-edge high-water mark
  under a row lock, see the long comment in 0001_initial.sql and docs/cloud.md.
- The arrays are sent as PostgreSQL array literals built with ``str.join``:
  psycopg2's adaptation of Python lists quotes every element in Python and is
  several times slower, which matters at tens of thousands of rows a second.
- Connections are re-opened by txpostgres' ``DeadConnectionDetector`` when
  PostgreSQL restarts; a batch that fails meanwhile fails its Deferred, the
  server drops that connection and the edge sends the batch again later.

Tests: tests/cloud/test_cloud_ingest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
from gridwire import IntervalRecord
from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from txpostgres import txpostgres
from txpostgres.reconnection import DeadConnectionDetector

from .connection import EdgeInfo, EdgeRefused

log = Logger(namespace="gridcloud.ingest")

#: Field order of the arrays passed to ingest_batch(): the wire's column order.
COLUMNS: tuple[str, ...] = IntervalRecord._fields

#: The one statement that stores a batch; bench/bench_ingest.py measures the raw
#: ceiling of PostgreSQL with exactly this statement.
INGEST_SQL = (
    "SELECT ingest_batch(%s, %s, %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::integer[], %s::bigint[], %s::integer[], %s::integer[])"
)

#: Largest value a bigint column holds; gridwire allows u64 energy registers.
BIGINT_MAX = 2**63 - 1

_ADMIT_SQL = """
INSERT INTO edges AS e (edge_id, last_connected_at, last_peer, firmware_version, boot_slot)
SELECT %(edge_id)s, now(), %(peer)s, %(firmware)s, %(slot)s
 WHERE NOT EXISTS (SELECT 1 FROM revoked_certificates WHERE serial = %(serial)s)
ON CONFLICT (edge_id) DO UPDATE
   SET last_connected_at = excluded.last_connected_at, last_peer = excluded.last_peer,
       firmware_version = excluded.firmware_version, boot_slot = excluded.boot_slot
 WHERE e.revoked_at IS NULL
RETURNING last_seq
"""

_REFUSAL_SQL = """
SELECT coalesce(
    (SELECT 'edge revoked at ' || revoked_at || coalesce(': ' || revoked_reason, '')
       FROM edges WHERE edge_id = %(edge_id)s AND revoked_at IS NOT NULL),
    (SELECT 'certificate serial ' || serial || ' revoked at ' || revoked_at
            || coalesce(': ' || reason, '')
       FROM revoked_certificates WHERE serial = %(serial)s),
    'refused')
"""


_REVOKED_AMONG_SQL = """
SELECT i.edge_id, i.serial
  FROM unnest(%s::text[], %s::numeric[]) AS i(edge_id, serial)
 WHERE EXISTS (SELECT 1 FROM edges e WHERE e.edge_id = i.edge_id AND e.revoked_at IS NOT NULL)
    OR EXISTS (SELECT 1 FROM revoked_certificates r WHERE r.serial = i.serial)
"""


class BadBatch(ValueError):
    """A batch holds a value PostgreSQL cannot store; it is refused, not truncated."""


def array_literal(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of integers: ``{1,2,3}``."""
    return "{" + ",".join(map(str, values)) + "}"


def batch_parameters(
    edge_id: str, first_seq: int, columns: Sequence[Sequence[int]]
) -> tuple[Any, ...]:
    """The parameters of INGEST_SQL for one batch given as eight columns in COLUMNS order."""
    if len(columns) != len(COLUMNS):
        raise BadBatch(f"expected {len(COLUMNS)} columns, got {len(columns)}")
    energy = columns[2]
    if energy and max(energy) > BIGINT_MAX:
        raise BadBatch("energy_wh above 2**63-1 cannot be stored")
    return (edge_id, first_seq, *map(array_literal, columns))


def _first_int(d: Any) -> defer.Deferred[int]:
    """The integer in the first column of the first row a query returns."""
    result: defer.Deferred[int] = d.addCallback(lambda rows: int(rows[0][0]))
    return result


class _Pool(txpostgres.ConnectionPool):  # type: ignore[misc]
    """A pool that uses the injected reactor and reconnects dead connections."""

    def __init__(self, reactor: IReactorCore, dsn: str, size: int) -> None:
        self.reactor = reactor
        super().__init__(None, dsn, min=size)

    def connectionFactory(self, reactor: IReactorCore, cooperator: Any) -> txpostgres.Connection:
        return txpostgres.Connection(
            reactor, cooperator, detector=DeadConnectionDetector(reactor=reactor)
        )


class _ListenConnection(txpostgres.Connection):  # type: ignore[misc]
    """A LISTEN connection whose loss is one log line, not an "Unhandled Error" traceback.

    txpostgres lets psycopg2's error escape from ``doRead`` when an idle
    connection dies; the reactor logs it as unhandled, then reports the loss.
    Returned instead, the error is the reason of ``connectionLost`` and the
    DeadConnectionDetector reconnects all the same.
    """

    def doRead(self) -> Any:
        try:
            super().doRead()
        except psycopg2.Error as exc:
            log.warn("LISTEN connection to PostgreSQL lost: {why}", why=str(exc).strip())
            return exc
        return None


class IngestStore:
    """The cloud's asynchronous access to PostgreSQL for edge sessions."""

    def __init__(self, reactor: IReactorCore, dsn: str, pool_size: int = 4) -> None:
        self._reactor = reactor
        self._dsn = dsn
        self._pool = _Pool(reactor, dsn, pool_size)
        self._listener: txpostgres.Connection | None = None

    def start(self) -> defer.Deferred[IngestStore]:
        """Open the pool's connections; fails if PostgreSQL cannot be reached."""
        d: defer.Deferred[IngestStore] = self._pool.start().addCallback(lambda _: self)
        return d

    def close(self) -> None:
        self._pool.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    @defer.inlineCallbacks
    def listen(
        self,
        channel: str,
        observer: Callable[[str], object],
        recovered: Callable[[], defer.Deferred[None]] | None = None,
    ) -> Any:
        """Call ``observer(payload)`` for each NOTIFY on ``channel``, on a connection of its own.

        The connection re-opens after PostgreSQL restarts and LISTENs again,
        then calls ``recovered()``: whatever was notified while it was down is
        lost, and the caller must look at the tables instead.
        """
        detector = DeadConnectionDetector(reactor=self._reactor)
        conn = _ListenConnection(self._reactor, detector=detector)
        self._listener = conn
        yield conn.connect(self._dsn)

        def deliver(notify: Any) -> None:
            if notify.channel == channel:
                observer(notify.payload)

        def subscribe() -> Any:
            return conn.runOperation(f'LISTEN "{channel}"')

        @defer.inlineCallbacks
        def resubscribe() -> Any:
            log.info("LISTEN {channel}: connection to PostgreSQL back", channel=channel)
            yield subscribe()
            if recovered is not None:
                yield recovered()

        conn.addNotifyObserver(deliver)
        detector.addRecoveryHandler(resubscribe)
        yield subscribe()

    def revoked_among(
        self, identities: Sequence[tuple[str, int]]
    ) -> defer.Deferred[set[tuple[str, int]]]:
        """The (edge id, serial) pairs of ``identities`` whose edge or certificate is revoked."""
        if not identities:
            return defer.succeed(set())
        d = self._pool.runQuery(
            _REVOKED_AMONG_SQL,
            ([edge for edge, _ in identities], [str(serial) for _, serial in identities]),
        )
        result: defer.Deferred[set[tuple[str, int]]] = d.addCallback(
            lambda rows: {(edge, int(serial)) for edge, serial in rows}
        )
        return result

    @defer.inlineCallbacks
    def admit(self, info: EdgeInfo) -> Any:
        """Register or update the edge and return its high-water mark (last committed seq).

        Raises EdgeRefused when the edge or this certificate is revoked.  An edge
        seen for the first time is created: a valid device certificate from the
        project CA is the enrolment (docs/cloud.md, "Identity").
        """
        params = {
            "edge_id": info.edge_id,
            "serial": info.serial,
            "peer": info.peer,
            "firmware": info.firmware_version,
            "slot": info.boot_slot,
        }
        rows = yield self._pool.runQuery(_ADMIT_SQL, params)
        if rows:
            return int(rows[0][0])
        why = yield self._pool.runQuery(_REFUSAL_SQL, params)
        raise EdgeRefused(why[0][0])

    def write_batch(
        self, edge_id: str, first_seq: int, columns: Sequence[Sequence[int]]
    ) -> defer.Deferred[int]:
        """Store one batch; fires with the previous high-water mark after COMMIT."""
        try:
            params = batch_parameters(edge_id, first_seq, columns)
        except BadBatch:
            return defer.fail()
        return _first_int(self._pool.runQuery(INGEST_SQL, params))

    def write_event(
        self, edge_id: str, seq: int, meter_id: int, time: int, kind: int, detail: str
    ) -> defer.Deferred[int]:
        """Store one reported event; fires with the previous high-water mark after COMMIT."""
        return _first_int(
            self._pool.runQuery(
                "SELECT ingest_event(%s, %s, %s, %s, %s, %s)",
                (edge_id, seq, meter_id, time, kind, detail),
            )
        )

    def ensure_partitions(self, days_ahead: int) -> defer.Deferred[int]:
        """Create missing daily readings partitions; fires with how many were made."""
        return _first_int(
            self._pool.runQuery("SELECT create_readings_partitions(%s)", (days_ahead,))
        )
