"""Writing what edges send into PostgreSQL, through a txpostgres connection pool.

Why this shape:

- One batch = one call of the ``ingest_batch()`` SQL function (migration 0001):
  one round trip, one transaction (psycopg2's asynchronous connections run every
  statement in its own transaction), a multi-row insert from ``unnest`` of
  parallel arrays.  The caller acknowledges the batch only once the returned
  Deferred fires, which is after COMMIT.
- Exactly once on (edge, seq): the function keeps a per-edge high-water mark
  under a row lock, see the long comment in 0001_initial.sql and docs/cloud.md;
  and on the natural key (meter_id, interval_end), unique since migration 0002:
  a reading stored already (a renumbered or back-filled journal) is skipped,
  counted, and logged when its values differ.
- Permanent vs transient failures: a record outside gridwire's value ranges, or
  one PostgreSQL refuses with a data or integrity error, can never be stored;
  it goes to ``dead_letters`` with the reason (``dead_letter()``, same
  high-water mark) and the batch succeeds, so the edge's other records flow.
  Any other failure (PostgreSQL down, a lost connection) fails the Deferred:
  the server closes the connection and the edge sends the batch again.
- The arrays are sent as PostgreSQL array literals built with ``str.join``:
  psycopg2's adaptation of Python lists quotes every element in Python and is
  several times slower, which matters at tens of thousands of rows a second.
- The connections are a :class:`gridcloud.pool.DatabasePool`: while PostgreSQL
  is down every call fails at once with ``StoreUnavailable`` (admission is
  refused with a retry hint; a batch in flight fails, the server drops that
  connection and the edge sends the batch again later).

Tests: tests/cloud/test_cloud_ingest.py, tests/cloud/test_cloud_server.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg2
from gridwire import (
    AlarmKind,
    EventReport,
    HealthSummary,
    IntervalRecord,
    RecordColumns,
    event_problem,
    record_problems,
)
from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from .connection import EdgeInfo, EdgeRefused
from .pool import DatabasePool, QuietConnection, StoppableDetector

log = Logger(namespace="gridcloud.ingest")

#: Field order of the arrays passed to ingest_batch(): the wire's column order.
COLUMNS: tuple[str, ...] = IntervalRecord._fields

#: The one statement that stores a batch; bench/bench_ingest.py measures the raw
#: ceiling of PostgreSQL with exactly this statement.
INGEST_SQL = (
    "SELECT * FROM ingest_batch(%s, %s, %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::integer[], %s::bigint[], %s::integer[], %s::integer[])"
)

_DEAD_LETTER_SQL = "SELECT dead_letter(%s, %s, %s, %s, %s)"

#: Failures no retry can cure: the record itself is the problem (SQLSTATE classes 22 and 23,
#: and psycopg2 refusing a value such as a string with NUL before sending it).
PERMANENT = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)

_ADMIT_SQL = """
INSERT INTO edges AS e (edge_id, last_connected_at, last_peer, firmware_version, boot_slot,
                        budget_bytes, month_bytes_reported)
SELECT %(edge_id)s, now(), %(peer)s, %(firmware)s, %(slot)s, %(budget)s, %(month)s
 WHERE NOT EXISTS (SELECT 1 FROM revoked_certificates WHERE serial = %(serial)s)
ON CONFLICT (edge_id) DO UPDATE
   SET last_connected_at = excluded.last_connected_at, last_peer = excluded.last_peer,
       firmware_version = excluded.firmware_version, boot_slot = excluded.boot_slot,
       budget_bytes = excluded.budget_bytes, month_bytes_reported = excluded.month_bytes_reported
 WHERE e.revoked_at IS NULL
RETURNING last_seq,
          EXISTS (SELECT 1 FROM certificate_renewals r
                   WHERE r.new_serial = %(serial)s
                     AND r.confirmed_at IS NULL AND r.superseded_at IS NULL)
"""

#: A renewed certificate was admitted: confirm it, revoke the one it replaces (migration 0011).
_CONFIRM_RENEWAL_SQL = "SELECT confirm_certificate_renewal(%(edge_id)s, %(serial)s)"

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

#: Adds a flush of gridcloud.traffic's counts: additive, so nodes and reconnects sum up.
TRAFFIC_SQL = """
INSERT INTO edge_traffic AS t (edge_id, day, bytes_up, bytes_down)
SELECT * FROM unnest(%s::text[], %s::date[], %s::bigint[], %s::bigint[])
ON CONFLICT (edge_id, day) DO UPDATE
   SET bytes_up = t.bytes_up + excluded.bytes_up, bytes_down = t.bytes_down + excluded.bytes_down
"""


def summary_fields(summary: HealthSummary) -> dict[str, int | None]:
    """A health summary's fields by name (what ``edges.health`` holds)."""
    return {name: getattr(summary, name) for name in HealthSummary.__dataclass_fields__}


def array_literal(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of integers: ``{1,2,3}``."""
    return "{" + ",".join(map(str, values)) + "}"


def batch_parameters(
    edge_id: str, first_seq: int, columns: Sequence[Sequence[int]]
) -> tuple[Any, ...]:
    """The parameters of INGEST_SQL for one batch given as eight columns in COLUMNS order."""
    if len(columns) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} columns, got {len(columns)}")
    return (edge_id, first_seq, *map(array_literal, columns))


def _reason(exc: BaseException) -> str:
    """What PostgreSQL (or psycopg2) said about a record it refused, on one line."""
    text = getattr(exc, "pgerror", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


def _first_int(d: Any) -> defer.Deferred[int]:
    """The integer in the first column of the first row a query returns."""
    result: defer.Deferred[int] = d.addCallback(lambda rows: int(rows[0][0]))
    return result


class IngestStore:
    """The cloud's asynchronous access to PostgreSQL for edge sessions."""

    log = Logger()

    def __init__(self, reactor: IReactorCore, dsn: str, pool_size: int = 4) -> None:
        self._reactor = reactor
        self._dsn = dsn
        self._pool = DatabasePool(reactor, dsn, pool_size)
        self._listeners: list[QuietConnection] = []

    @property
    def pool(self) -> DatabasePool:
        """The connections (read by gridcloud.metrics for the pool gauges)."""
        return self._pool

    def start(self) -> defer.Deferred[IngestStore]:
        """Open the pool's connections; fails if PostgreSQL cannot be reached."""
        d: defer.Deferred[IngestStore] = self._pool.start().addCallback(lambda _: self)
        return d

    def close(self) -> None:
        self._pool.close()
        for listener in self._listeners:
            listener.shut()  # and its reconnection, if PostgreSQL was down
        self._listeners = []

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
        detector = StoppableDetector(self._reactor)
        conn = QuietConnection(self._reactor, detector=detector)
        self._listeners.append(conn)
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

    def run(self, sql: str, params: Any = None) -> defer.Deferred[list[tuple[Any, ...]]]:
        """Rows of one statement on the pool (gridcloud.commands' queries)."""
        d: defer.Deferred[list[tuple[Any, ...]]] = self._pool.runQuery(sql, params)
        return d

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
        project CA is the enrolment (docs/cloud.md, "Identity").  When the
        certificate is a renewal not confirmed yet (gridcloud.renewal), this first
        admission with it confirms it and revokes the certificate it replaces:
        one more statement, only then (the flag comes with the admission's row).
        """
        params = {
            "edge_id": info.edge_id,
            "serial": info.serial,
            "peer": info.peer,
            "firmware": info.firmware_version,
            "slot": info.boot_slot,
            "budget": info.budget_bytes,
            # an extension is not sent when 0: with a budget, no count means none yet
            "month": (info.month_bytes or 0) if info.budget_bytes else None,
        }
        rows = yield self._pool.runQuery(_ADMIT_SQL, params)
        if rows:
            last_seq, renewed = rows[0]
            if renewed:
                revoked = yield self._pool.runQuery(_CONFIRM_RENEWAL_SQL, params)
                if revoked and revoked[0][0] is not None:
                    self.log.info(
                        "edge {edge}: renewed certificate serial {serial} works; "
                        "revoked the one it replaces, serial {old}",
                        edge=info.edge_id, serial=info.serial, old=int(revoked[0][0]),
                    )
            return int(last_seq)
        why = yield self._pool.runQuery(_REFUSAL_SQL, params)
        raise EdgeRefused(why[0][0])

    def write_batch(
        self, edge_id: str, first_seq: int, columns: RecordColumns
    ) -> defer.Deferred[int]:
        """Store one batch; fires with the previous high-water mark after COMMIT.

        One ``ingest_batch()`` call when every record is storable (the fast path);
        otherwise the batch is stored piece by piece (see :meth:`_piecewise`).
        """
        problems = record_problems(columns)
        if problems:
            return defer.ensureDeferred(self._piecewise(edge_id, first_seq, columns, problems))
        d = self._ingest(edge_id, first_seq, columns)

        def refused(failure: Any) -> Any:
            failure.trap(*PERMANENT)
            return defer.ensureDeferred(self._piecewise(edge_id, first_seq, columns, {}))

        result: defer.Deferred[int] = d.addErrback(refused)
        return result

    async def _piecewise(
        self, edge_id: str, first_seq: int, columns: RecordColumns, problems: dict[int, str]
    ) -> int:
        """Store a batch holding records that cannot be stored: each run of good records in
        one call, each bad record in dead_letters; a run PostgreSQL refuses is tried again
        record by record, to find the one it refuses and why.  Each call is exactly once on
        its own, so a failure half way is resumed by the edge's resend.  Returns the
        high-water mark before the first piece."""
        rows = list(columns.rows())
        marks: list[int] = []
        index = 0
        while index < len(rows):
            if index in problems:
                marks.append(await self._set_aside(edge_id, first_seq, rows, index,
                                                   problems[index]))
                index += 1
                continue
            end = index
            while end < len(rows) and end not in problems:
                end += 1
            try:
                marks.append(await self._ingest(edge_id, first_seq + index,
                                                RecordColumns(*zip(*rows[index:end], strict=True))))
            except PERMANENT:
                for i in range(index, end):
                    try:
                        marks.append(await self._ingest(edge_id, first_seq + i,
                                                        RecordColumns(*zip(rows[i]))))
                    except PERMANENT as exc:
                        marks.append(await self._set_aside(edge_id, first_seq, rows, i,
                                                           _reason(exc)))
            index = end
        return marks[0]

    def _set_aside(
        self, edge_id: str, first_seq: int, rows: Sequence[Sequence[int]], index: int, reason: str
    ) -> defer.Deferred[int]:
        record = dict(zip(COLUMNS, rows[index], strict=True))
        return self._dead_letter(edge_id, first_seq + index, "reading", record, reason)

    def _ingest(self, edge_id: str, first_seq: int, columns: RecordColumns) -> defer.Deferred[int]:
        """One ingest_batch() call; logs readings skipped on the natural key whose values differ."""
        params = batch_parameters(edge_id, first_seq, columns.as_tuple())
        d = self._pool.runQuery(INGEST_SQL, params)

        def stored(rows: Any) -> int:
            previous, duplicates, conflicts, meter, end = rows[0]
            if conflicts:
                self.log.warn(
                    "edge {edge}: {n} of {dups} readings already stored under other sequence "
                    "numbers differ from the stored ones (first: meter {meter} at {end}); "
                    "kept the stored values",
                    edge=edge_id, n=conflicts, dups=duplicates, meter=meter, end=end,
                )
            return int(previous)

        result: defer.Deferred[int] = d.addCallback(stored)
        return result

    def _dead_letter(
        self, edge_id: str, seq: int, kind: str, record: Mapping[str, object], reason: str
    ) -> defer.Deferred[int]:
        """Set one record aside in dead_letters (exactly once); fires with the previous mark."""
        self.log.warn(
            "edge {edge}: seq {seq} ({kind}) cannot be stored, set aside in dead_letters: "
            "{reason}", edge=edge_id, seq=seq, kind=kind, reason=reason,
        )
        return _first_int(
            self._pool.runQuery(
                _DEAD_LETTER_SQL, (edge_id, seq, kind, json.dumps(record), reason[:500])
            )
        )

    def write_event(self, edge_id: str, event: EventReport) -> defer.Deferred[int]:
        """Store one reported event; fires with the previous high-water mark after COMMIT.

        An event outside the value ranges, or one PostgreSQL refuses, goes to dead_letters.
        """
        record = {
            "meter_id": event.meter_id, "time": event.time, "kind": int(event.kind),
            "detail": event.detail,
        }
        problem = event_problem(event)
        if problem is not None:
            return self._dead_letter(edge_id, event.seq, "event", record, problem)
        if event.kind == AlarmKind.HEALTH_SUMMARY and event.meter_id == 0:
            health = self._health(edge_id, event)
            if health is not None:
                return health
        d = _first_int(
            self._pool.runQuery(
                "SELECT ingest_event(%s, %s, %s, %s, %s, %s)",
                (edge_id, event.seq, event.meter_id, event.time, int(event.kind), event.detail),
            )
        )

        def refused(failure: Any) -> defer.Deferred[int]:
            failure.trap(*PERMANENT)
            return self._dead_letter(edge_id, event.seq, "event", record, _reason(failure.value))

        result: defer.Deferred[int] = d.addErrback(refused)
        return result

    def _health(self, edge_id: str, event: EventReport) -> defer.Deferred[int] | None:
        """A health summary: the edge's latest summary, exactly once on (edge, seq), not an
        event row (migration 0011); None when its detail does not parse (then it is stored as
        a plain event, for someone to look at)."""
        try:
            summary = HealthSummary.from_detail(event.detail)
        except ValueError as exc:
            self.log.warn("edge {edge}: health summary at seq {seq} unreadable ({why}); kept "
                          "as a plain event", edge=edge_id, seq=event.seq, why=str(exc))
            return None
        numbers = {k: v for k, v in summary_fields(summary).items() if v is not None}
        return _first_int(self._pool.runQuery(
            "SELECT ingest_health_summary(%s, %s, %s, %s::jsonb)",
            (edge_id, event.seq, event.time, json.dumps(numbers))))

    def add_traffic(self, rows: Sequence[tuple[str, str, int, int]]) -> defer.Deferred[Any]:
        """Add (edge id, UTC day, bytes up, bytes down) rows to ``edge_traffic`` in one statement;
        each (edge, day) at most once (gridcloud.traffic sums per key first)."""
        edges, days, up, down = (list(column) for column in zip(*rows, strict=True))
        d: defer.Deferred[Any] = self._pool.runOperation(TRAFFIC_SQL, (edges, days, up, down))
        return d

    def ensure_partitions(self, days_ahead: int) -> defer.Deferred[int]:
        """Create missing daily readings partitions; fires with how many were made."""
        return _first_int(
            self._pool.runQuery("SELECT create_readings_partitions(%s)", (days_ahead,))
        )
