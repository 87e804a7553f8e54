"""Byte counting below TLS: what the operator of a metered link pays for.

Why below TLS: the cellular contract bills bytes on the socket, so handshakes,
session tickets and record overhead count, not only gridwire's frames.  The
counter sits between TCP and ``TLSMemoryBIOProtocol``::

    TCP  ->  ByteCounter (raw bytes)  ->  TLSMemoryBIOProtocol  ->  application protocol

:class:`CountingEndpoint` wraps any client endpoint so that every connection it
makes is counted; the uplink (gridedge.uplink.service) and the load generator
(gridedge.loadgen, used by bench/bench_ingest.py) both build their stack this
way, so the benchmark measures exactly what a unit pays.

Tests: tests/edge/test_uplink_tls.py, tests/cloud/test_cloud_server.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

#: Told of every chunk as (sent, received) bytes, e.g. to add to a day's traffic.
Tally = Callable[[int, int], None]


class ByteCounter(ProtocolWrapper):
    """Counts every byte in and out of one connection (TLS records included)."""

    factory: _CountingFactory
    sent = 0
    received = 0

    def write(self, data: bytes) -> None:
        self._count(len(data), 0)
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self._count(0, len(data))
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _count(self, sent: int, received: int) -> None:
        self.sent += sent
        self.received += received
        if self.factory.tally is not None:
            self.factory.tally(sent, received)


class _CountingFactory(WrappingFactory):
    protocol = ByteCounter

    def __init__(self, wrapped: IProtocolFactory, tally: Tally | None) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.tally = tally


@implementer(IStreamClientEndpoint)
class CountingEndpoint:
    """Wraps a (TCP) client endpoint so that every connection's raw bytes are counted;
    ``tally``, if given, hears of every chunk."""

    def __init__(self, wrapped: IStreamClientEndpoint, tally: Tally | None = None) -> None:
        self._wrapped = wrapped
        self._tally = tally

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self._wrapped.connect(
            _CountingFactory(protocolFactory, self._tally))
        return d.addCallback(lambda protocol: protocol.wrappedProtocol)


def raw_counter(transport: Any) -> ByteCounter | None:
    """The counter under a TLS transport (None when the connection is not counted)."""
    below = getattr(transport, "transport", None)
    return below if isinstance(below, ByteCounter) else None
