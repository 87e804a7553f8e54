"""The Twisted side of an edge connection: a thin adapter around EdgeConnection.

Stack of one accepted connection (bottom to top)::

    TCP  ->  TrafficCounter (gridcloud.traffic: bytes per edge per day)
         ->  TLSMemoryBIOProtocol (mutual TLS, gridcloud.tls.ServerTLS)
         ->  EdgeProtocol (this module: bytes in, bytes out, pause, close)
         ->  EdgeConnection (gridcloud.connection: every decision)

The adapter feeds the connection what Twisted reports (accepted, TLS
handshake done, bytes, lost) and is its :class:`~gridcloud.connection.Transport`;
once the connection has named its edge, it tells the byte counter whose bytes
they are.
:class:`DeferredStore` offers the connection the database
(:class:`~gridcloud.ingest.IngestStore`, Deferreds) as the callbacks it
expects.  No rule lives here: a change of behaviour belongs in
gridcloud.connection and its unit tests.

The metrics (gridcloud.metrics.ServeMetrics: connections, handshakes full or
resumed, commits and their latency, back-pressure pauses) are counted here, where
Twisted reports those moments, so the rules in gridcloud.connection stay free of them.

Tests: tests/cloud/test_cloud_server.py, tests/system/test_certificates.py,
tests/cloud/test_cloud_metrics.py, tests/cloud/test_api_traffic.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from gridwire import ReadingBatch, ReferenceTable
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .connection import EdgeConnection, EdgeInfo, Transport, Upload
from .ingest import IngestStore
from .metrics import ServeMetrics
from .refchain import Stored
from .references import ReferenceStore
from .tls import ServerTLS, keep_session_resumable, session_reused, ssl_error_text
from .traffic import counter_under

T = TypeVar("T")


class _TLSTransport(Protocol):
    """What the adapter uses of its transport, a TLSMemoryBIOProtocol.

    TLSMemoryBIOFactory puts one under every connection; its methods carry no
    annotations, so this names (and lets mypy check) the part that is used.
    """

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def getPeerCertificate(self) -> Any: ...

    def getHandle(self) -> SSL.Connection | None: ...


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


@implementer(IHandshakeListener)
class EdgeProtocol(TwistedProtocol):
    """Feeds an EdgeConnection and carries out what it decides; nothing else."""

    def __init__(self, factory: EdgeFactory) -> None:
        self._factory = factory
        self.connection: EdgeConnection | None = None

    @property
    def _tls(self) -> _TLSTransport:
        return cast(_TLSTransport, self.transport)

    # -- from Twisted ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._factory.connections.add(self)
        if self._factory.metrics is not None:
            self._factory.metrics.connections.inc()
            self._factory.metrics.connections_open.inc()
        self.connection = self._factory.make_connection(self, _describe(self._tls.getPeer()))
        self.connection.connected()

    def handshakeCompleted(self) -> None:
        assert self.connection is not None
        cert = self._tls.getPeerCertificate()
        metrics = self._factory.metrics
        if metrics is not None:
            handle = self._tls.getHandle()
            resumed = handle is not None and session_reused(handle)
            metrics.handshakes.labels(kind="resumed" if resumed else "full").inc()
        self.connection.handshake_completed(cert.to_cryptography() if cert is not None else None)
        counter = counter_under(self.transport)
        if counter is not None and self.connection.edge_id is not None:
            counter.attribute(self.connection.edge_id)

    def dataReceived(self, data: bytes) -> None:
        assert self.connection is not None
        self.connection.data_received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._factory.connections.discard(self)
        if self._factory.metrics is not None:
            self._factory.metrics.connections_open.dec()
        keep_session_resumable(self._tls.getHandle())
        tls_failure = self._factory.tls.failure_for(self.transport)
        if tls_failure is None and reason.check(SSL.Error):  # type: ignore[no-untyped-call]
            tls_failure = ssl_error_text(reason.value)
        if tls_failure is not None and self._factory.metrics is not None:
            self._factory.metrics.handshake_failures.inc()
        if self.connection is not None:
            self.connection.connection_lost(reason.getErrorMessage(), tls_failure)

    # -- gridcloud.connection.Transport --------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._tls.write(data)

    def pause_reading(self) -> None:
        if self._factory.metrics is not None:
            self._factory.metrics.backpressure_pauses.inc()
        self._tls.pauseProducing()

    def resume_reading(self) -> None:
        self._tls.resumeProducing()

    def close(self) -> None:
        self._tls.loseConnection()

    def abort(self) -> None:
        self._tls.abortConnection()


class EdgeFactory(Factory):
    """Builds an EdgeProtocol for each accepted connection and keeps them (to drop at stop)."""

    def __init__(
        self,
        make_connection: Callable[[Transport, str], EdgeConnection],
        tls: ServerTLS,
        metrics: ServeMetrics | None = None,
    ) -> None:
        #: ``make_connection(transport, peer)``: the EdgeConnection of a new connection
        self.make_connection = make_connection
        #: the TLS options, asked why a handshake failed
        self.tls = tls
        #: counts connections, handshakes and pauses (None: not counted)
        self.metrics = metrics
        self.connections: set[EdgeProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> EdgeProtocol:
        return EdgeProtocol(self)

    def abort_all(self) -> None:
        """Drop every open connection at once (the server is stopping)."""
        for protocol in list(self.connections):
            protocol.abort()


class DeferredStore:
    """The IngestStore as a connection's Store: Deferreds turned into done/failed callbacks."""

    def __init__(self, store: IngestStore, metrics: ServeMetrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._references = ReferenceStore(store.pool)

    def load_references(
        self,
        edge_id: str,
        done: Callable[[Stored | None], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        _answer(self._references.load(edge_id), done, failed)

    def save_references(
        self,
        edge_id: str,
        expected: int,
        as_of: int,
        table: ReferenceTable,
        done: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        _answer(self._references.save(edge_id, expected, as_of, table), done, failed)

    def admit(
        self, info: EdgeInfo, done: Callable[[int], None], failed: Callable[[BaseException], None]
    ) -> None:
        _answer(self._store.admit(info), done, failed)

    def write(
        self,
        edge_id: str,
        upload: Upload,
        done: Callable[[int], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        if isinstance(upload, ReadingBatch):
            d = self._store.write_batch(edge_id, upload.first_seq, upload.columns)
        else:
            d = self._store.write_event(edge_id, upload)
        if self._metrics is not None:
            d = self._count(d, upload)
        _answer(d, done, failed)

    def _count(self, d: defer.Deferred[int], upload: Upload) -> defer.Deferred[int]:
        metrics = self._metrics
        assert metrics is not None
        started = time.monotonic()

        def committed(result: int) -> int:
            metrics.commit_seconds.observe(time.monotonic() - started)
            if isinstance(upload, ReadingBatch):
                metrics.uploads.labels(kind="batch").inc()
                metrics.readings.inc(upload.last_seq - upload.first_seq + 1)
            else:
                metrics.uploads.labels(kind="event").inc()
            return result

        def failed(failure: Failure) -> Failure:
            metrics.upload_failures.inc()
            return failure

        return d.addCallbacks(committed, failed)


def _answer(
    d: defer.Deferred[T], done: Callable[[T], None], failed: Callable[[BaseException], None]
) -> None:
    def fail(failure: Failure) -> None:
        assert failure.value is not None
        failed(failure.value)

    d.addCallbacks(done, fail)
