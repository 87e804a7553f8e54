"""``gridcloud serve``: edges connect over mutual TLS, their uploads land in PostgreSQL.

Theory of operation
-------------------
:class:`CloudService` (a ``MultiService``, the root of the server's supervision
tree) opens the txpostgres pool, makes sure the readings partitions exist, then
listens on a plain TCP endpoint wrapped in TLS by :class:`gridcloud.tls.ServerTLS`.

Each accepted connection gets an :class:`EdgeProtocol`, a thin adapter around
``gridwire.CloudSession``: bytes go into the session, the messages that come out
become calls on :class:`gridcloud.ingest.IngestStore`, and the session encodes
the answers.  Per connection:

1. TLS handshake.  OpenSSL has checked the chain against the project CA only;
   the edge id comes from the client certificate (:func:`gridcloud.pki.edge_id_from_certificate`).
2. Hello -> ``IngestStore.admit``: refuses revoked edges/certificates, registers
   new ones, returns the edge's high-water mark.  The connection becomes the
   edge's live session (a previous one is closed) and Welcome carries
   ``last_acked_seq`` = that mark, so the edge resumes exactly after it.
3. ReadingBatch / EventReport are queued and written strictly in order, one at
   a time (the high-water mark is only correct if a connection's uploads
   commit in sequence order).  Ack(up_to_seq) is sent after each COMMIT.
4. Back-pressure: when ``max_pending_uploads`` uploads wait for PostgreSQL, the
   socket is paused (``pauseProducing``): the kernel's buffers fill, TCP flow
   control slows the edge, and the server's memory stays bounded.  Reading
   resumes as commits complete.
5. Every refusal (TLS, identity, revocation, protocol) is one log line naming
   the peer and the reason.
6. A revocation committed while the edge is connected arrives by
   ``NOTIFY gridcloud_revoked`` and closes the live session.

Tests: tests/cloud/test_cloud_server.py, tests/system/test_certificates.py.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

import gridwire
from gridwire import (
    Ack,
    CommandResult,
    Error,
    ErrorCode,
    EventReport,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    ReadingBatch,
    Welcome,
)
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from . import migrations, revocation
from .config import ServerConfig
from .ingest import EdgeInfo, EdgeRefused, IngestStore
from .pki import PKIError, edge_id_from_certificate
from .sessions import SessionRegistry
from .tls import ServerTLS, keep_session_resumable, ssl_error_text

log = Logger(namespace="gridcloud.server")

Upload = ReadingBatch | EventReport
SILENT = "silent for 3 heartbeat intervals"


def _peer(transport: Any) -> str:
    address = transport.getPeer()
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)


@implementer(IHandshakeListener)
class EdgeProtocol(Protocol):
    """One edge connection: gridwire in, PostgreSQL writes and acks out."""

    def __init__(self, server: CloudService) -> None:
        self._server = server
        config = server.config
        self._session = gridwire.CloudSession(
            limits=gridwire.Limits(
                max_frame_size=config.max_frame_size,
                max_batch_records=config.max_batch_records,
                max_in_flight=config.max_in_flight,
            )
        )
        self.edge_id: str | None = None
        self.peer = "?"
        self._serial = 0
        self._uploads: deque[Upload] = deque()
        self._writing = False
        self._paused = False
        self._closing = False
        self._handshake_done = False
        self._live = False
        self._timer: Any = None  # IDelayedCall: Hello timeout, then the silence check
        self._last_heard = 0.0

    # -- connection life -----------------------------------------------------------------

    @property
    def _tx(self) -> Any:
        """The TLS transport, untyped (mypy cannot see zope interfaces without a plugin)."""
        return self.transport

    def connectionMade(self) -> None:
        self.peer = _peer(self.transport)
        self._server.connections.add(self)
        self._arm(self._server.config.hello_timeout, "no TLS handshake and Hello")

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        cert = self._tx.getPeerCertificate()
        try:
            if cert is None:
                raise PKIError("no client certificate")
            crypto_cert = cert.to_cryptography()
            self.edge_id = edge_id_from_certificate(crypto_cert)
            self._serial = crypto_cert.serial_number
        except PKIError as exc:
            self._refuse(f"refused TLS client {self.peer}: {exc}")

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_heard = self._server.clock.seconds()
        try:
            messages = self._session.receive_data(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        for message in messages:
            if self._closing:
                return
            self._dispatch(message)

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason if reason is not None else Failure(ConnectionDone())  # type: ignore[no-untyped-call]
        self._closing = True
        self._uploads.clear()
        self._disarm()
        self._server.connections.discard(self)
        keep_session_resumable(self._tx.getHandle())
        if self.edge_id is not None and self._live:
            self._server.sessions.release(self.edge_id, self)
            log.info(
                "edge {edge} ({peer}) disconnected: {why}",
                edge=self.edge_id,
                peer=self.peer,
                why=reason.getErrorMessage(),
            )
        elif not self._handshake_done:
            why = self._server.tls.failure_for(self.transport)
            if why is None and reason.check(SSL.Error):  # type: ignore[no-untyped-call]
                why = ssl_error_text(reason.value)
            elif why is None:
                why = "closed before the TLS handshake completed: " + reason.getErrorMessage()
            log.warn("refused TLS client {peer}: handshake failed: {why}", peer=self.peer, why=why)

    # -- messages ------------------------------------------------------------------------

    def _dispatch(self, message: gridwire.Message) -> None:
        if isinstance(message, ReadingBatch | EventReport):
            self._uploads.append(message)
            if len(self._uploads) >= self._server.config.max_pending_uploads:
                self._pause()
            self._write_next()
        elif isinstance(message, Ping):
            self._send(Pong(nonce=message.nonce))
        elif isinstance(message, Hello):
            self._hello(message)
        elif isinstance(message, Error):
            log.warn(
                "edge {edge} ({peer}) sent Error {code}: {detail}",
                edge=self.edge_id,
                peer=self.peer,
                code=message.code,
                detail=message.detail,
            )
            self._close()
        elif isinstance(message, CommandResult):
            log.info(
                "edge {edge}: command {cid} status {status} {detail}",
                edge=self.edge_id,
                cid=message.command_id,
                status=message.status,
                detail=message.detail,
            )

    def _hello(self, hello: Hello) -> None:
        if self.edge_id is None:  # data before the handshake finished cannot happen in TLS
            self._refuse(f"refused {self.peer}: Hello without an edge identity")
            return
        version = self._session.choose_version()
        if version is None:
            self._refuse(
                f"refused edge {self.edge_id} ({self.peer}): no common protocol version "
                f"(edge speaks {hello.min_version}..{hello.max_version})",
                ErrorCode.UNSUPPORTED_VERSION,
            )
            return
        self._pause()
        info = EdgeInfo(
            self.edge_id, self._serial, self.peer, hello.firmware_version, hello.boot_slot
        )
        d = self._server.store.admit(info)
        d.addCallbacks(self._admitted, self._not_admitted, callbackArgs=(version,))

    def _admitted(self, last_seq: int, version: int) -> None:
        if self._closing:
            return
        assert self.edge_id is not None
        config = self._server.config
        self._live = True
        self._server.sessions.claim(self.edge_id, self, self.peer)
        self._send(
            Welcome(
                version=version,
                server_time=int(self._server.clock.seconds()),
                last_acked_seq=last_seq,
                heartbeat_interval=config.heartbeat_interval,
                max_in_flight=config.max_in_flight,
            )
        )
        log.info(
            "edge {edge} connected from {peer}, resuming after seq {seq}",
            edge=self.edge_id,
            peer=self.peer,
            seq=last_seq,
        )
        self._check_silence()
        self._resume()

    def _not_admitted(self, failure: Failure) -> None:
        if failure.check(EdgeRefused):  # type: ignore[no-untyped-call]
            self._refuse(f"refused edge {self.edge_id} ({self.peer}): {failure.value}")
        else:
            log.failure(
                "admitting edge {edge} ({peer}) failed", failure, edge=self.edge_id, peer=self.peer
            )
            self._fail(ErrorCode.INTERNAL_ERROR, "database unavailable, try later")

    # -- ingest pipeline -----------------------------------------------------------------

    def _write_next(self) -> None:
        if self._writing or not self._uploads or self._closing:
            return
        upload = self._uploads[0]
        self._writing = True
        store = self._server.store
        assert self.edge_id is not None
        if isinstance(upload, ReadingBatch):
            d = store.write_batch(self.edge_id, upload.first_seq, upload.columns.as_tuple())
            first, last = upload.first_seq, upload.last_seq
        else:
            d = store.write_event(
                self.edge_id, upload.seq, upload.meter_id, upload.time, upload.kind, upload.detail
            )
            first = last = upload.seq
        d.addCallbacks(
            self._committed,
            self._write_failed,
            callbackArgs=(first, last),
            errbackArgs=(first, last),
        )

    def _committed(self, previous: int, first: int, last: int) -> None:
        self._writing = False
        if self._closing:
            return
        self._uploads.popleft()
        if first > previous + 1:
            log.warn(
                "edge {edge}: seq {a}..{b} never arrived (dropped on the edge?)",
                edge=self.edge_id,
                a=previous + 1,
                b=first - 1,
            )
        self._send(Ack(up_to_seq=last))
        if self._paused and len(self._uploads) < self._server.config.max_pending_uploads:
            self._resume()
        self._write_next()

    def _write_failed(self, failure: Failure, first: int, last: int) -> None:
        self._writing = False
        if self._closing:
            return
        log.error(
            "edge {edge} ({peer}): storing seq {a}..{b} failed, closing so that the edge "
            "sends it again: {why}",
            edge=self.edge_id,
            peer=self.peer,
            a=first,
            b=last,
            why=failure.getErrorMessage(),
        )
        self._fail(ErrorCode.INTERNAL_ERROR, "could not store upload, try later")

    # -- flow control and closing ----------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused and not self._closing:
            self._paused = True
            self._tx.pauseProducing()

    def _resume(self) -> None:
        if self._paused and not self._closing:
            self._paused = False
            self._tx.resumeProducing()

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self._timer = self._server.clock.callLater(seconds, self._timed_out, why)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check_silence(self) -> None:
        """Close a connection silent for 3 heartbeat intervals (a NAT ghost), else look again later.

        One timer per connection, re-armed only when it fires: cheaper with 10,000
        connections than moving a timer on every packet.
        """
        self._disarm()
        allowed = 3 * self._server.config.heartbeat_interval
        quiet = self._server.clock.seconds() - self._last_heard
        if quiet >= allowed:
            self._timed_out(SILENT)
        else:
            self._timer = self._server.clock.callLater(allowed - quiet, self._check_silence)

    def _timed_out(self, why: str) -> None:
        self._timer = None
        log.warn("closing {peer} (edge {edge}): {why}", peer=self.peer, edge=self.edge_id, why=why)
        self._fail(ErrorCode.TIMEOUT, why)

    def _send(self, message: gridwire.Message) -> None:
        self._tx.write(self._session.send(message))

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.warn(
            "edge {edge} ({peer}) broke the protocol ({code}): {why}",
            edge=self.edge_id,
            peer=self.peer,
            code=exc.code.name,
            why=str(exc),
        )
        self._fail(exc.code, str(exc))

    def _refuse(self, line: str, code: ErrorCode = ErrorCode.UNAUTHORIZED) -> None:
        log.warn(line)
        self._fail(code, line.split(": ", 1)[-1])

    def _fail(self, code: ErrorCode, detail: str) -> None:
        """Tell the peer why (if the session still allows it), then close."""
        if self._closing:
            return
        with contextlib.suppress(ProtocolError):  # a closed session may send nothing more
            self._send(Error(code=code, detail=detail[:200]))
        self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self._disarm()
            self._uploads.clear()
            self._resume_for_close()
            if not self._handshake_done:
                # TLS would hold the close until a handshake that is not coming.
                self._tx.abortConnection()
                return
            self._tx.loseConnection()
            # A peer that never reads would keep the connection forever: cut it.
            self._timer = self._server.clock.callLater(10, self._tx.abortConnection)

    def _resume_for_close(self) -> None:
        if self._paused:
            self._paused = False
            self._tx.resumeProducing()

    @property
    def serial(self) -> int:
        """Serial number of the client certificate (0 before the handshake)."""
        return self._serial

    def revoked(self) -> None:
        """The edge or its certificate was revoked while connected: close the session."""
        log.warn(
            "edge {edge} ({peer}) revoked while connected: closing its session",
            edge=self.edge_id,
            peer=self.peer,
        )
        self._fail(ErrorCode.UNAUTHORIZED, "revoked")

    def replaced(self, by: str) -> None:
        """A newer session of the same edge took over: close this one."""
        log.info(
            "edge {edge}: session from {old} replaced by a new one from {new}",
            edge=self.edge_id,
            old=self.peer,
            new=by,
        )
        self._live = False
        self._fail(ErrorCode.SHUTTING_DOWN, "replaced by a newer session of this edge")


class EdgeFactory(Factory):
    """Builds an EdgeProtocol for each accepted connection."""

    def __init__(self, server: CloudService) -> None:
        self._server = server

    def buildProtocol(self, addr: Any) -> EdgeProtocol:
        return EdgeProtocol(self._server)


class CloudService(service.MultiService):
    """The cloud server's root service: pool, partition upkeep, TLS listener.

    Start it with ``startService()``; ``ready`` fires with the listening port
    (or fails if PostgreSQL or the port cannot be opened).  ``stopService()``
    stops listening, closes every connection and the pool.
    """

    def __init__(
        self, reactor: Any, config: ServerConfig, *, tls: ServerTLS | None = None, clock: Any = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        #: IReactorTime for timeouts and Welcome.server_time (tests inject a task.Clock)
        self.clock = clock if clock is not None else reactor
        self.config = config.validate()
        assert config.cert and config.key and config.ca and config.dsn
        self.tls = (
            tls
            if tls is not None
            else ServerTLS.from_files(
                config.cert,
                config.key,
                config.ca,
                groups=config.tls_groups,
                resumption=config.tls_resumption,
                session_lifetime=config.tls_session_lifetime,
            )
        )
        self.store = IngestStore(reactor, config.dsn, config.pool_size)
        self.sessions: SessionRegistry[EdgeProtocol] = SessionRegistry()
        self.connections: set[EdgeProtocol] = set()
        self.port: Any = None  # IListeningPort, once listening
        self.ready: defer.Deferred[Any] = defer.Deferred()
        self._partitions: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self.ready.errback)

    async def _start(self) -> Any:
        await self.store.start()
        await self.store.listen(revocation.CHANNEL, self._revoked)
        await self._ensure_partitions()
        self._partitions = task.LoopingCall(self._ensure_partitions)
        self._partitions.clock = self.clock
        self._partitions.start(self.config.partition_check_interval, now=False)
        endpoint = endpoints.serverFromString(  # type: ignore[no-untyped-call]
            self.reactor, self.config.listen
        )
        factory = TLSMemoryBIOFactory(self.tls, False, EdgeFactory(self))
        self.port = await endpoint.listen(factory)
        log.info("gridcloud listening on {address} (mutual TLS)", address=self.port.getHost())
        return self.port

    def _revoked(self, payload: str) -> None:
        """A revocation was committed (on any node): close the edge's live session if it matches."""
        edge_id, _, serial = payload.partition(" ")
        session = self.sessions.get(edge_id)
        if session is not None and (not serial or serial == str(session.serial)):
            session.revoked()

    def _ensure_partitions(self) -> defer.Deferred[None]:
        def created(count: int) -> None:
            if count:
                log.info("created {count} readings partitions", count=count)

        def failed(failure: Failure) -> None:
            log.failure("creating readings partitions failed (will retry)", failure)

        d = self.store.ensure_partitions(self.config.partition_days_ahead)
        return d.addCallbacks(created, failed)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()  # type: ignore[no-untyped-call]
        if self._partitions is not None and self._partitions.running:
            self._partitions.stop()
        if self.port is not None:
            yield self.port.stopListening()
        for connection in list(self.connections):
            connection._tx.abortConnection()
        self.store.close()


def check_schema(dsn: str, apply: bool) -> list[migrations.Migration]:
    """Before serving: apply pending migrations if asked, else refuse to serve a stale schema."""
    if apply:
        return migrations.migrate(dsn)
    missing = migrations.pending(dsn)
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise migrations.MigrationError(
            f"the database lacks migrations {names}: run 'gridcloud migrate' first "
            "(or serve with --migrate)"
        )
    return []
