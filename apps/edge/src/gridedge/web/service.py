"""The web page as a Twisted service: HTTPS on the configured address, bounded requests.

Why bodies are bounded here, below Klein: twisted.web reads a whole body before any route
runs, so a limit checked in a route comes too late.  :class:`BoundedRequest` looks at the
announced length (and counts chunked bodies as they come) and answers 413 and closes the
connection as soon as a body would pass ``max_body`` (``max_upload`` for the firmware upload,
whose body is spooled to a file on /data: twisted.web would use /tmp, which is RAM on the unit).

On start: the certificate is made if missing (gridedge.web.tlscert), the provisioning token is
made if the unit has no administrator (its path is logged, never its value), and the listening
port opens on ``[web] address``; a port that cannot be opened fails the start, and the
supervisor retries with backoff.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.logger import Logger, globalLogPublisher
from twisted.web import server

from gridedge.config import WebConfig

from .accounts import Accounts
from .actions import ActionPort
from .app import WebApp
from .diagnostics import LogTail
from .firmware import BundleStore
from .hashing import ChildHasher
from .history import History
from .live import LiveHub
from .sessions import LoginLimiter, Sessions
from .status import Dashboard, UnitView
from .tlscert import ensure_certificate, fingerprint

__all__ = ["BoundedRequest", "WebService"]

_UPLOAD_PATH = b"/firmware/upload"


class BoundedRequest(server.Request):
    """A request whose body may not pass the site's limits; a firmware upload's body is spooled
    to ``spool_dir`` (on /data) rather than to /tmp, which is RAM on the unit."""

    max_body = 16 << 10
    max_upload = 256 << 20
    spool_dir: Path | None = None
    _refused = False

    def gotLength(self, length: int | None) -> None:
        path = getattr(self.channel, "_path", b"") or b""
        upload = path.split(b"?")[0] == _UPLOAD_PATH
        self._limit = self.max_upload if upload else self.max_body
        self._received = 0
        super().gotLength(length)  # type: ignore[no-untyped-call]
        if upload and self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            if self.content is not None:
                self.content.close()
            # Owned by the request; unlinked from the start, gone when closed or collected.
            self.content = tempfile.TemporaryFile(dir=self.spool_dir)  # noqa: SIM115
        if length is not None and length > self._limit:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered with 413 already; the connection is closing
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def _refuse(self) -> None:
        self._refused = True
        if self.content is not None:
            self.content.close()
        self.content = io.BytesIO()
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        body = (f"request body larger than {self._limit} bytes\n").encode()
        transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain\r\n"
                        b"connection: close\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()


class WebService(service.Service):
    """The page: state on /data, the Klein app, the live hub and the listening port."""

    log = Logger()

    def __init__(self, unit: UnitView, history: History, actions: ActionPort, reactor: Any,
                 logs: LogTail | None = None) -> None:
        self.unit = unit
        self.config: WebConfig = unit.config.web
        self.history = history
        self.actions = actions
        self.reactor = reactor
        self.logs = logs or LogTail()
        self.port: Any = None
        self.web: WebApp | None = None

    def startService(self) -> defer.Deferred[None]:
        c = self.config
        folder = c.state_dir
        cert, key = ensure_certificate(folder, c.address, f"gridedge {c.address}")
        accounts = Accounts(folder, ChildHasher(self.reactor))
        token = accounts.ensure_token()
        clock = self.reactor.seconds
        dashboard = Dashboard(self.unit, self.history, clock)
        self.web = web = WebApp(
            self.unit, self.history, self.actions, accounts,
            Sessions(folder, c.session_ttl, clock),
            LoginLimiter(c.login_attempts, c.login_window, clock),
            BundleStore(folder / "upload", c.max_upload), self.logs, dashboard)
        hub = LiveHub(self.reactor, c.live_every, self.history, web.dash_values,
                      web.live_rows, web.meter_fragment, gap=c.live_gap)
        web.hub = hub
        site = server.Site(web.app.resource())  # type: ignore[no-untyped-call]
        site.displayTracebacks = False

        class Request(BoundedRequest):
            max_body = c.max_body
            max_upload = c.max_upload
            spool_dir = folder / "upload"

        site.requestFactory = Request
        site.timeOut = 60  # idle connections; live streams write at least every 15 s
        pem = cert.read_bytes() + key.read_bytes()
        options = PrivateCertificate.loadPEM(pem).options()  # type: ignore[no-untyped-call]
        endpoint = SSL4ServerEndpoint(  # type: ignore[no-untyped-call]
            self.reactor, c.port, options, interface=c.address)
        globalLogPublisher.addObserver(self.logs)
        super().startService()  # type: ignore[no-untyped-call]
        hub.start()
        self.hub = hub
        url = f"https://{c.address}:{c.port}/"
        d: defer.Deferred[Any] = endpoint.listen(site)  # type: ignore[no-untyped-call]

        def listening(port: Any) -> None:
            self.port = port
            self.log.info("web page at {url} (certificate SHA-256 {fp})", url=url,
                          fp=fingerprint(cert))
            if token is not None:
                self.log.warn("web: no administrator yet: set one up at {url}setup with the "
                              "provisioning token in {path}", url=url,
                              path=str(accounts.token_path))

        return d.addCallback(listening)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if getattr(self, "hub", None) is not None:
            self.hub.stop()
        globalLogPublisher.removeObserver(self.logs)
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)




