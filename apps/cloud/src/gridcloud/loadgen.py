"""A minimal gridwire edge over mutual TLS: to load-test and to check a cloud deployment.

Why it lives in gridcloud: the benchmark (bench/bench_ingest.py) and the
tests need an edge that speaks the real protocol over real TLS but none of the
edge's machinery (journal, radio, supervision), and an operator checking a new
cloud node wants the same ("can an edge with this certificate get in?").  It
is a thin Twisted adapter around ``gridwire.EdgeSession``, like the real uplink.

It also counts the raw bytes on the socket (TLS records included) and can
resume a TLS session: the measurements the benchmark reports.

Tests: tests/cloud/test_cloud_server.py, tests/system/test_certificates.py (as their client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gridwire
from gridwire import Ack, Error, ErrorCode, Hello, Ping, Pong, ProtocolError, ReadingBatch, Welcome
from OpenSSL import SSL
from twisted.internet import defer, endpoints, ssl
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .tls import keep_session_resumable, set_groups, ssl_error_text, tolerate_cuts

log = Logger(namespace="gridcloud.loadgen")


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientTLS:
    """Client TLS options that offer the session kept from the previous connection.

    TLS 1.3 sends the session ticket after the handshake, so the session is
    taken (``remember``) once the first application bytes have arrived.
    """

    def __init__(self, inner: Any, groups: str | None = "X25519") -> None:
        self._inner = inner
        self._groups = groups
        self.session: SSL.Session | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._inner.clientConnectionForTLS(tlsProtocol)
        if self._groups:
            set_groups(connection, self._groups)  # one small key share: fewer bytes
        tolerate_cuts(connection)
        if self.session is not None:
            connection.set_session(self.session)
        return connection

    def remember(self, connection: SSL.Connection) -> None:
        self.session = connection.get_session()


def session_reused(connection: SSL.Connection) -> bool | None:
    """Whether the handshake resumed a session (None when this OpenSSL binding cannot say).

    pyOpenSSL has no public call for it; the binding underneath has SSL_session_reused.
    """
    from OpenSSL._util import lib

    reused = getattr(lib, "SSL_session_reused", None)
    ssl_ptr = getattr(connection, "_ssl", None)
    if reused is None or ssl_ptr is None:
        return None
    return bool(reused(ssl_ptr))


def client_tls(hostname: str, ca: Path, cert: Path, key: Path) -> ResumingClientTLS:
    """The edge's TLS options: trust only ``ca``, check ``hostname``, present cert/key."""
    authority = ssl.Certificate.loadPEM(ca.read_bytes())
    mine = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]
        cert.read_bytes() + b"\n" + key.read_bytes()
    )
    return ResumingClientTLS(
        ssl.optionsForClientTLS(hostname, trustRoot=authority, clientCertificate=mine)
    )


class _Counting(ProtocolWrapper):
    """Counts raw socket bytes in each direction (below TLS)."""

    factory: CountingFactory

    def write(self, data: bytes) -> None:
        self.factory.bytes_out += len(data)
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, data: Any) -> None:
        self.factory.bytes_out += sum(map(len, data))
        super().writeSequence(data)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        self.factory.bytes_in += len(data)
        super().dataReceived(data)  # type: ignore[no-untyped-call]


class CountingFactory(WrappingFactory):
    """Wraps one connection's protocol to count the bytes on the socket."""

    protocol = _Counting

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.bytes_in = 0
        self.bytes_out = 0


class EdgeClient(Protocol):
    """One edge connection: Hello, then uploads; Deferreds for what tests wait on."""

    def __init__(
        self,
        hello: Hello,
        tls: ResumingClientTLS | None = None,
        limits: gridwire.Limits | None = None,
    ) -> None:
        self.session = gridwire.EdgeSession(limits=limits)
        self._hello = hello
        self._tls = tls
        self.welcome: defer.Deferred[Welcome] = defer.Deferred()
        #: fires (with None) when the connection is gone; ``reason`` then says why
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.errors: list[Error] = []
        self.pongs: list[int] = []
        self.acked = 0
        self.resumed: bool | None = None
        self._waiters: list[tuple[int, defer.Deferred[int]]] = []

    @property
    def _tx(self) -> Any:
        """The TLS transport, untyped (mypy cannot see zope interfaces without a plugin)."""
        return self.transport

    def connectionMade(self) -> None:
        self._tx.write(self.session.send(self._hello))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.session.receive_data(data)
        except ProtocolError as exc:
            self._tx.abortConnection()
            self._fail_waiters(Failure(exc))  # type: ignore[no-untyped-call]
            return
        for message in messages:
            if isinstance(message, Welcome):
                handle = self._tx.getHandle()
                self.resumed = session_reused(handle)
                if self._tls is not None:
                    self._tls.remember(handle)
                self.welcome.callback(message)
            elif isinstance(message, Ack):
                self.acked = message.up_to_seq
                ready = [w for w in self._waiters if w[0] <= self.acked]
                self._waiters = [w for w in self._waiters if w[0] > self.acked]
                for _, d in ready:
                    d.callback(self.acked)
            elif isinstance(message, Ping):
                self._tx.write(self.session.send(Pong(nonce=message.nonce)))
            elif isinstance(message, Pong):
                self.pongs.append(message.nonce)
            elif isinstance(message, Error):
                self.errors.append(message)

    def upload(self, batch: ReadingBatch) -> defer.Deferred[int]:
        """Send a batch; fires with the ack that covers it."""
        d: defer.Deferred[int] = defer.Deferred()
        self._waiters.append((batch.last_seq, d))
        self._tx.write(self.session.send(batch))
        return d

    def send(self, message: gridwire.Message) -> None:
        self._tx.write(self.session.send(message))

    def send_raw(self, data: bytes) -> None:
        self._tx.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason if reason is not None else Failure(ConnectionDone())  # type: ignore[no-untyped-call]
        if self.transport is not None:
            keep_session_resumable(self._tx.getHandle())
        if not self.welcome.called:
            detail = "; ".join(f"Error {ErrorCode(e.code).name}: {e.detail}" for e in self.errors)
            log.warn(
                "no session with the cloud (refused or failed before Welcome): {why}",
                why=detail or describe_failure(reason),
            )
            self.welcome.errback(reason)
        self._fail_waiters(reason)
        self.reason = reason
        self.lost.callback(None)

    def _fail_waiters(self, reason: Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(reason)


def describe_failure(reason: Failure) -> str:
    """A one-line reason for a failed or refused connection (for logs and tests)."""
    if reason.check(SSL.Error):  # type: ignore[no-untyped-call]
        return "TLS: " + ssl_error_text(reason.value)
    return reason.getErrorMessage()


async def connect(
    reactor: Any,
    endpoint: str,
    tls: ResumingClientTLS,
    hello: Hello,
    counting: bool = False,
    limits: gridwire.Limits | None = None,
) -> tuple[EdgeClient, CountingFactory | None]:
    """Open a TLS connection and send Hello; returns the client (wait on ``.welcome``)."""
    client = EdgeClient(hello, tls, limits)
    protocols: Any = Factory.forProtocol(lambda: client)
    factory: Any = TLSMemoryBIOFactory(tls, True, protocols)
    counter = None
    if counting:
        counter = factory = CountingFactory(factory)
    await endpoints.clientFromString(reactor, endpoint).connect(  # type: ignore[no-untyped-call]
        factory
    )
    return client, counter
