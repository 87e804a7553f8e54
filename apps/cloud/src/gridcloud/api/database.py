"""The API's access to PostgreSQL: a txpostgres pool, so no query blocks the reactor.

Why txpostgres like ingest (gridcloud.ingest): psycopg2's asynchronous
connections driven by the reactor, one statement per round trip.  The pool is
ingest's :class:`gridcloud.pool.DatabasePool`: it knows when PostgreSQL is down
(a query then fails at once with ``StoreUnavailable`` and its retry hint, which
the routes answer with 503 and ``Retry-After``) and re-opens its connections
promptly when it is back.
Every statement runs in its own transaction, except :meth:`Database.interaction`
(the CSV export's server-side cursor lives in one).

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from gridcloud.pool import DatabasePool, QuietConnection, StoppableDetector


class Database:
    """Queries as Deferreds over a pool of ``size`` connections."""

    def __init__(self, reactor: Any, dsn: str, size: int) -> None:
        self._reactor = reactor
        self.dsn = dsn
        self._pool = DatabasePool(reactor, dsn, size)

    @property
    def pool(self) -> DatabasePool:
        """The connections (read by gridcloud.metrics for the pool gauges)."""
        return self._pool

    def start(self) -> defer.Deferred[Any]:
        return self._pool.start()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._pool.close()

    def rows(self, sql: str, args: Any = None) -> defer.Deferred[list[tuple[Any, ...]]]:
        """The rows ``sql`` returns."""
        return self._pool.runQuery(sql, args)  # type: ignore[no-any-return]

    def run(self, sql: str, args: Any = None) -> defer.Deferred[Any]:
        """Run ``sql`` for its effect."""
        return self._pool.runOperation(sql, args)  # type: ignore[no-any-return]

    def interaction(self, work: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``work(cursor, *args)`` in one transaction on one connection."""
        return self._pool.runInteraction(work, *args)  # type: ignore[no-any-return]

    def listener(self) -> QuietConnection:
        """A connection of its own (for LISTEN), not part of the pool, not yet connected; it
        reconnects after an outage until :meth:`QuietConnection.shut`."""
        return QuietConnection(self._reactor, detector=StoppableDetector(self._reactor))
