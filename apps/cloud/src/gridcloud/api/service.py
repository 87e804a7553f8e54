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

from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.server import Site

from .config import ApiConfig
from .database import Database
from .feed import FeedHub
from .resources import operations
from .routes import Api

log = Logger(namespace="gridcloud.api")


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
        self.api = Api(operations(config, self.feed.operations(config)), self.db, config,
                       self.clock)
        self.ready: defer.Deferred[Any] = defer.Deferred()
        #: the IListeningPort, once listening
        self.port: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        defer.ensureDeferred(self._start()).addCallbacks(self.ready.callback, self.ready.errback)

    async def _start(self) -> Any:
        await self.db.start()
        await self.feed.start()
        site = Site(self.api.resource())  # type: ignore[no-untyped-call]
        site.displayTracebacks = False
        if not self.config.access_log:
            site.log = _no_access_log  # type: ignore[method-assign]
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
        self.db.close()


def _no_access_log(request: Any) -> None:
    """Site.log when ``access_log = false``: no line per request."""
