"""The Twisted side of the uplink: a thin adapter between the TLS transport and the Link.

Stack of one connection (bottom to top)::

    TCP  ->  ByteCounter (gridedge.uplink.counting: raw bytes = what the operator pays for)
         ->  TLSMemoryBIOProtocol
         ->  UplinkProtocol  ->  Link (gridedge.uplink.link: the rules)

Tests: tests/edge/test_uplink_tls.py, tests/system/test_faults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridedge.uplink.link import Link


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
