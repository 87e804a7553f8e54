"""The API's access to PostgreSQL: a txpostgres pool, so no query blocks the reactor.

Why txpostgres like ingest (gridcloud.ingest): psycopg2's asynchronous
connections driven by the reactor, one statement per round trip, dead
connections re-opened after a PostgreSQL restart by ``DeadConnectionDetector``.
Every statement runs in its own transaction, except :meth:`Database.interaction`
(the CSV export's server-side cursor lives in one).

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from txpostgres import txpostgres
from txpostgres.reconnection import DeadConnectionDetector


class _Pool(txpostgres.ConnectionPool):  # type: ignore[misc]
    """A pool on the injected reactor whose connections re-open when PostgreSQL restarts."""

    def __init__(self, reactor: Any, dsn: str, size: int) -> None:
        self.reactor = reactor
        super().__init__(None, dsn, min=size)

    def connectionFactory(self, reactor: Any, cooperator: Any) -> txpostgres.Connection:
        return txpostgres.Connection(
            reactor, cooperator, detector=DeadConnectionDetector(reactor=reactor)
        )


class Database:
    """Queries as Deferreds over a pool of ``size`` connections."""

    def __init__(self, reactor: Any, dsn: str, size: int) -> None:
        self._reactor = reactor
        self.dsn = dsn
        self._pool = _Pool(reactor, dsn, size)

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

    def listener(self) -> txpostgres.Connection:
        """A connection of its own (for LISTEN), not part of the pool, not yet connected."""
        return txpostgres.Connection(
            self._reactor, detector=DeadConnectionDetector(reactor=self._reactor)
        )
