"""``gridcloud api``'s service tree: the pool, the feed's LISTEN, then the HTTP listener.

:class:`ApiService` opens the txpostgres pool, LISTENs for the live feed
(gridcloud.api.feed), then listens on the configured
endpoint with a Twisted ``Site`` over the Klein app.  ``ready`` fires with the
listening port.  Stopping stops listening, then closes the pool.  Nothing here
keeps state beyond PostgreSQL, so any number of these processes can run behind
a load balancer.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_feed.py.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.server import Request, Site

from ..config import ReleasesConfig
from ..metrics import ApiMetrics, MetricsListener, pool_gauges
from . import upload
from .config import ApiConfig
from .database import Database
from .deltas import DeltaMaker
from .feed import FeedHub
from .resources import operations
from .routes import Api

log = Logger(namespace="gridcloud.api")


class _TimedRequest(Request):
    """A request that knows when it arrived, for the latency histogram; a bundle upload's
    body goes to the releases folder as it arrives (gridcloud.api.upload)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.arrived = time.monotonic()

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        releases = getattr(channel.site, "releases", None)
        spool = None
        if releases is not None and releases.enabled:
            # The request line is parsed (on the channel) before the body's length is known.
            spool = upload.spool_for(getattr(channel, "_command", None),
                                     getattr(channel, "_path", None),
                                     releases.folder, releases.max_bytes, length)
        if spool is None:
            super().gotLength(length)  # type: ignore[no-untyped-call]
        else:
            self.content = spool


class _CountingSite(Site):
    """A Site that counts every finished request in ApiMetrics and writes its access log line
    (``access_log``), once the answer has been sent.

    Why after: twisted.web calls ``Site.log`` from ``Request.finish``, before the reactor
    writes the buffered answer to the socket (when it next polls).  Formatting and writing
    the log line and the metrics there made every answer wait for them.  They are recorded
    two reactor turns later (two ``callLater(0)`` hops), which is after that write whether
    ``finish`` ran in a turn's timed calls (an answer after a query: txpostgres hands results
    over with ``callLater(0)``) or in its I/O callbacks (an answer given at once, e.g. a 401):
    a timed call made during a turn runs in the next turn's timed calls, and each turn polls
    (and writes) after its timed calls.  The latency observed is still arrival to finish,
    taken at once.
    """

    def __init__(self, resource: Any, metrics: ApiMetrics, releases: ReleasesConfig, *,
                 reactor: Any, access_log: bool) -> None:
        super().__init__(resource, requestFactory=_TimedRequest,  # type: ignore[no-untyped-call]
                         reactor=reactor)
        self._metrics = metrics
        self._access_log = access_log
        #: where bundle uploads are spooled (read by _TimedRequest)
        self.releases = releases

    def log(self, request: Any) -> None:
        arrived = getattr(request, "arrived", None)
        seconds = time.monotonic() - arrived if arrived is not None else 0.0
        self.reactor.callLater(0, self.reactor.callLater, 0, self._record, request, seconds)

    def _record(self, request: Any, seconds: float) -> None:
        if self._access_log:
            super().log(request)
        self._metrics.observe(request.method, request.uri, request.code, seconds)


class ApiService(service.MultiService):
    """The root service of ``gridcloud api``."""

    def __init__(self, reactor: Any, config: ApiConfig, *, clock: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config.validate()
        assert config.dsn
        self._reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.db = Database(reactor, config.dsn, config.pool_size)
        self.feed = FeedHub(self.db)
        #: makes the deltas of new releases in child processes (gridcloud.api.deltas)
        self.deltas = DeltaMaker(reactor, self.db, config.releases)
        self.api = Api(operations(config, self.feed.operations(config), self.deltas, reactor),
                       self.db, config, self.clock)
        self.ready: defer.Deferred[Any] = defer.Deferred()
        #: the IListeningPort, once listening
        self.port: Any = None
        #: Prometheus metrics of this process (served when ``config.metrics_listen`` is set)
        self.metrics = ApiMetrics()
        pool_gauges(self.metrics.registry, "gridcloud_api", self.db.pool)
        self.metrics_listener: MetricsListener | None = None
        if config.metrics_listen:
            self.metrics_listener = MetricsListener(
                reactor, config.metrics_listen, self.metrics.registry, self.health)
            self.metrics_listener.setServiceParent(self)  # type: ignore[no-untyped-call]

    def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/healthz``: answering HTTP and PostgreSQL reachable."""
        if not self.running:
            return False, "stopping"
        if self.port is None:
            return False, "starting"
        if not self.db.pool.available:
            return False, "PostgreSQL unreachable"
        return True, "ok"

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        defer.ensureDeferred(self._start()).addCallbacks(self.ready.callback, self.ready.errback)

    async def _start(self) -> Any:
        if self.metrics_listener is not None:
            await self.metrics_listener.listen()
        await self.db.start()
        await self.feed.start()
        self.deltas.start()
        if self.config.releases.folder is not None:
            upload.sweep(self.config.releases.folder)
        site = _CountingSite(self.api.resource(), self.metrics, self.config.releases,
                             reactor=self._reactor, access_log=self.config.access_log)
        site.displayTracebacks = False
        endpoint = endpoints.serverFromString(  # type: ignore[no-untyped-call]
            self._reactor, self.config.listen
        )
        self.port = await endpoint.listen(site)
        log.info("gridcloud api listening on {address}", address=self.port.getHost())
        return self.port

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            yield self.port.stopListening()
        self.feed.stop()
        yield self.deltas.stop()
        self.db.close()

