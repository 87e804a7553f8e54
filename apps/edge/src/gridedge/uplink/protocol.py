"""The Twisted side of the uplink: byte counting below TLS, a thin adapter above it.

Stack of one connection (bottom to top)::

    TCP  ->  _CountingProtocol (raw bytes = what the operator pays for)
         ->  TLSMemoryBIOProtocol
         ->  UplinkProtocol  ->  Link (gridedge.uplink.link: the rules)

Tests: tests/edge/test_uplink_tls.py, tests/system/test_faults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gridedge.uplink.link import Link


class _CountingProtocol(ProtocolWrapper):
    """Counts every byte in and out of the TCP connection (TLS records included)."""

    sent = 0
    received = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        self.factory.count(len(data), 0)
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.factory.count(0, len(data))
        super().dataReceived(data)  # type: ignore[no-untyped-call]


class _CountingFactory(WrappingFactory):
    protocol = _CountingProtocol

    def __init__(self, wrapped: IProtocolFactory, count: Callable[[int, int], None]) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.count = count


@implementer(IStreamClientEndpoint)
class CountingEndpoint:
    """Wraps a TCP endpoint so that every connection's raw bytes are counted."""

    def __init__(self, wrapped: IStreamClientEndpoint, count: Callable[[int, int], None]) -> None:
        self._wrapped = wrapped
        self._count = count

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self._wrapped.connect(
            _CountingFactory(protocolFactory, self._count))
        return d.addCallback(lambda protocol: protocol.wrappedProtocol)


def raw_counter(transport: Any) -> _CountingProtocol | None:
    """The counting layer under a TLS transport (None when not running over one)."""
    below = getattr(transport, "transport", None)
    return below if isinstance(below, _CountingProtocol) else None


class UplinkProtocol(Protocol):
    """Feeds bytes to the Link, and its writes to the transport; nothing else."""

    log = Logger()

    def __init__(self, make_link: Callable[[UplinkProtocol], Link]) -> None:
        self._make_link = make_link
        self.link: Link | None = None
        self.got_data = False

    def connectionMade(self) -> None:
        self.link = self._make_link(self)
        self.link.connected()

    def dataReceived(self, data: bytes) -> None:
        if self.link is not None:
            self.got_data = True
            self.link.data_received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link is not None:
            ready = self.link.session.welcome is not None
            self.link.connection_lost()
            if not ready:
                self.log.warn("uplink connection closed before Welcome: {reason}",
                              reason=reason.getErrorMessage())

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            # Always TLS over TCP here (ITLSTransport), which has abortConnection.
            cast(ITCPTransport, self.transport).abortConnection()

    def tls_connection(self) -> Any:
        """The pyOpenSSL connection under this protocol (None without TLS)."""
        get = getattr(self.transport, "getHandle", None)
        return get() if get is not None else None
