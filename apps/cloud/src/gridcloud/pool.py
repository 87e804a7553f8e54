"""The cloud's PostgreSQL connections: a txpostgres pool that knows when the database is down.

Why not txpostgres' pool as it is: its connections find out that PostgreSQL
went away one by one, and the pool keeps handing out the dead ones.  After a
restart an edge was admitted on a connection that had reconnected and its
first write failed on one that had not (with an empty reason: txpostgres'
``ConnectionDead``); reconnection waited up to 10 s between attempts, and an
idle connection that lost its server logged an "Unhandled Error" traceback.
Here:

- the first connection found dead (idle ones notice at once: the server's
  goodbye makes their socket readable) marks the whole database *down*, with
  one log line; it is *back*, with one more line, when every connection has
  reconnected;
- while down, queries fail at once with :class:`~gridcloud.connection.StoreUnavailable`,
  which carries the retry hint the cloud sends to edges in ``Error.retry_after``;
  a query that fails because its connection died fails the same way;
- dead connections retry every :data:`RECONNECT_MAX` seconds at most, so
  commits resume within about that long after PostgreSQL is back;
- a dead idle connection is closed quietly (no traceback), and closing the pool
  stops every reconnection loop; so does shutting a connection of its own
  (:meth:`QuietConnection.shut`: the LISTEN connections of ingest and the pipeline,
  presence's), which txpostgres' own detector would reconnect for ever.

Tests: tests/cloud/test_cloud_database_outage.py, tests/cloud/test_cloud_server.py.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import psycopg2
from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import retrying, txpostgres
from txpostgres.reconnection import ConnectionDead, DeadConnectionDetector

from .connection import StoreUnavailable

#: Longest wait between two reconnection attempts of a dead connection, seconds.
RECONNECT_MAX = 0.5

#: Bounds of the retry hint sent to edges while the database is down, seconds: the hint is
#: how long the database has been down so far, within these bounds, so that a restart of a
#: few seconds costs a few seconds and a long outage costs an edge one attempt a minute.
RETRY_AFTER_MIN = 2
RETRY_AFTER_MAX = 300

#: Failures that mean the connection (or the server) is gone, not that the query was wrong.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, ConnectionDead)

log = Logger(namespace="gridcloud.pool")


class Database(Protocol):
    """What a service of ``gridcloud serve`` needs of PostgreSQL: statements and LISTEN
    (command delivery, firmware serving; gridcloud.ingest.IngestStore fits)."""

    def run(self, sql: str, params: Any = None) -> defer.Deferred[list[tuple[Any, ...]]]: ...

    def listen(
        self,
        channel: str,
        observer: Callable[[str], object],
        recovered: Callable[[], defer.Deferred[None]] | None = None,
    ) -> Any: ...


def _reconnection_delays() -> Iterator[float]:
    """At once, then quickly, then every RECONNECT_MAX seconds for ever."""
    delays: Iterator[float] = retrying.simpleBackoffIterator(
        initialDelay=0.1, maxDelay=RECONNECT_MAX, factor=2.0, maxRetries=0, now=True
    )
    return delays


class StoppableDetector(DeadConnectionDetector):  # type: ignore[misc]
    """txpostgres' detector whose reconnection loop ends when its connection is shut.

    txpostgres' own loop has no end: a connection closed while it was dead (a LISTEN
    connection when its service stops during an outage) would go on reconnecting for ever,
    its sockets coming and going in the reactor of whatever runs next (the test session's
    shared one: tests/test_reactor_guard.py).
    """

    def __init__(self, reactor: Any,
                 reconnection_delays: Callable[[], Iterator[float]] | None = None) -> None:
        # reactor: its time (the callers hold the whole reactor, typed for what else they use)
        super().__init__(reconnectionIterator=reconnection_delays, reactor=reactor)
        self._retrying: defer.Deferred[Any] | None = None
        self._stopped = False

    def startReconnecting(self, f: Failure) -> None:
        if self._stopped:
            return
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        self._retrying = call.start(self.reconnectionIterator())
        self._retrying.addCallbacks(self._recovered, self._ended)

    def _recovered(self, _: object) -> Any:
        self._retrying = None
        return self.connectionRecovered()

    def _ended(self, failure: Failure) -> None:
        """The loop only ends by stop(): cancelled, or its attempt in flight failing after."""
        self._retrying = None
        if not self._stopped:
            failure.trap(defer.CancelledError)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Reconnect no more (the connection is being closed for good)."""
        self._stopped = True
        retrying_call, self._retrying = self._retrying, None
        if retrying_call is not None:
            # An attempt in flight refuses to be cancelled (txpostgres' _CancelInProgress);
            # the loop is marked cancelled all the same, and closing the connection fails
            # that attempt, which ends it.
            with contextlib.suppress(Exception):
                retrying_call.cancel()


class _Detector(StoppableDetector):
    """The pool's detector: reports loss and recovery to the pool, retries quickly."""

    def __init__(self, reactor: IReactorTime, pool: DatabasePool) -> None:
        super().__init__(reactor, _reconnection_delays)
        self._pool = pool

    def startReconnecting(self, f: Failure) -> None:
        if not self._stopped:
            self._pool.connection_lost(f)
        super().startReconnecting(f)

    def _recovered(self, _: object) -> Any:
        d = super()._recovered(_)
        self._pool.connection_back()
        return d


class QuietConnection(txpostgres.Connection):  # type: ignore[misc]
    """A connection whose loss while idle is handed to its detector instead of raised into
    the reactor (which logs it as an "Unhandled Error" traceback)."""

    def doRead(self) -> Any:
        try:
            return super().doRead()
        except (psycopg2.Error, ValueError) as exc:
            # A returned exception makes the reactor drop this reader and call
            # connectionLost with it, which starts the detector's reconnection.
            # ValueError: after a failed reconnection attempt txpostgres re-registers a
            # connection that has no socket (descriptor -1).
            return exc

    def shut(self) -> None:
        """Close for good: its detector's reconnection loop (if any) ends too."""
        detector = getattr(self, "detector", None)
        if isinstance(detector, StoppableDetector):
            detector.stop()
        if self._connection is not None:
            self.close()


class DatabasePool(txpostgres.ConnectionPool):  # type: ignore[misc]
    """A pool that hands out only live connections and says when PostgreSQL is down or back."""

    def __init__(self, reactor: Any, dsn: str, size: int) -> None:
        self.reactor = reactor  # time, file descriptors and core: the reactor itself
        self._detectors: list[_Detector] = []
        #: reactor time the database was found down, None while it is up
        self.down_since: float | None = None
        super().__init__(None, dsn, min=size)

    def connectionFactory(self, reactor: IReactorCore, cooperator: Any) -> QuietConnection:
        detector = _Detector(self.reactor, self)
        self._detectors.append(detector)
        return QuietConnection(self.reactor, cooperator, detector=detector)

    @property
    def available(self) -> bool:
        return self.down_since is None

    def retry_after(self) -> int:
        """The hint for edges: seconds down so far, within RETRY_AFTER_MIN..RETRY_AFTER_MAX."""
        down = 0.0 if self.down_since is None else self.reactor.seconds() - self.down_since
        return max(RETRY_AFTER_MIN, min(RETRY_AFTER_MAX, math.ceil(down)))

    def unavailable(self, why: str) -> StoreUnavailable:
        return StoreUnavailable(f"database unavailable ({why})", self.retry_after())

    # -- told by the detectors -----------------------------------------------------------------

    def connection_lost(self, failure: Failure) -> None:
        if self.down_since is not None:
            return
        self.down_since = self.reactor.seconds()
        log.warn(
            "PostgreSQL connection lost ({why}): refusing edges until it is back",
            why=_reason(failure),
        )

    def connection_back(self) -> None:
        if self.down_since is None or any(d.connectionIsDead for d in self._detectors):
            return
        down, self.down_since = self.reactor.seconds() - self.down_since, None
        log.info("PostgreSQL is back after {down:.1f} s: accepting edges again", down=down)

    # -- the pool --------------------------------------------------------------------------

    def close(self) -> None:
        for detector in self._detectors:
            detector.stop()
        super().close()

    def _runQuery(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return self._run(lambda c: c.runQuery(*args, **kwargs))

    def _runOperation(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return self._run(lambda c: c.runOperation(*args, **kwargs))

    def _runInteraction(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return self._run(lambda c: c.runInteraction(*args, **kwargs))

    def _run(self, call: Callable[[Any], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        """Run ``call`` on an idle live connection (the pool's semaphore holds one for us)."""
        if self.down_since is not None:
            return defer.fail(self.unavailable("down"))
        connection = next((c for c in self.connections if not c.detector.connectionIsDead), None)
        if connection is None:
            return defer.fail(self.unavailable("no live connection"))
        self.connections.remove(connection)
        d: defer.Deferred[Any] = call(connection)
        d.addBoth(self._putBackAndPassthrough, connection)
        return d.addErrback(self._translate)

    def _translate(self, failure: Failure) -> Failure:
        """A lost connection is the database being unavailable, said with a reason."""
        if failure.check(*CONNECTION_ERRORS):  # type: ignore[no-untyped-call]
            raise self.unavailable(_reason(failure)) from failure.value
        return failure


def _reason(failure: Failure) -> str:
    """A one-line reason, never empty (txpostgres' ConnectionDead has no message)."""
    text = str(failure.value).strip().splitlines()
    return text[0] if text else type(failure.value).__name__
