"""The uplink as a Twisted service: reconnect forever, backing off until the cloud admits us.

Why ClientService: it owns the reconnect loop (one connection at a time, a
retry policy, clean stop).  The delays come from
:class:`~gridedge.uplink.backoff.ReconnectPolicy`, which this service tells
about each Welcome and each Error from the cloud: the backoff resets only on
Welcome, and a refused unit waits long (see that module).

The service also owns the link's byte counts: every byte on the socket goes to
:class:`~gridedge.uplink.traffic.Traffic`, written once a minute and at stop.

Tests: tests/edge/test_uplink_tls.py (real TLS over loopback), tests/edge/test_uplink_backoff.py,
tests/system/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridwire import AlarmKind, Welcome
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gridedge.journal import Event, Journal, JournalError
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.budget import DataBudget
from gridedge.uplink.counting import CountingEndpoint, raw_counter
from gridedge.uplink.link import (
    CommandReceiver,
    FirmwareReceiver,
    Link,
    LinkCounters,
    LinkSettings,
)
from gridedge.uplink.protocol import UplinkProtocol
from gridedge.uplink.tls import DeviceIdentity, ResumingCreator
from gridedge.uplink.traffic import Traffic, TrafficError


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    """What `gridedge health` and the logs report about the uplink."""

    connected: bool
    last_connected_at: float | None
    connections: int
    full_handshakes: int
    resumed_handshakes: int
    last_handshake_bytes: int | None
    bytes_sent: int
    bytes_received: int
    #: gridwire frames without TLS, and uploads, since start (gridedge.uplink.link.LinkCounters)
    payload_sent: int
    payload_received: int
    batches_sent: int
    records_sent: int
    #: [uplink] budget_mb_per_month in bytes (0: none), this UTC month's use, and how many
    #: times rarer uploads and heartbeats are because of it (gridedge.uplink.budget)
    budget_bytes: int
    month_bytes: int
    budget_stretch: float


class UplinkService(service.Service):
    """Keeps one gridwire session to the cloud alive, sending what the journal holds."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        journal: Journal,
        traffic: Traffic,
        *,
        host: str,
        port: int,
        server_name: str,
        identity_loader: Callable[[], DeviceIdentity],
        settings: LinkSettings,
        backoff: ReconnectPolicy,
        connect_timeout: float,
        flush_every: float = 60.0,
        commands: CommandReceiver | None = None,
        expected_meters: Callable[[], int] = lambda: 0,
        budget_bytes: int = 0,
        firmware: FirmwareReceiver | None = None,
    ) -> None:
        self._firmware = firmware
        self._commands = commands
        self._expected_meters = expected_meters
        self.budget = DataBudget(budget_bytes)
        self.month_bytes = 0
        self.stretch = 1.0
        self.reactor = reactor
        self.journal = journal
        self.traffic = traffic
        self._flush_every = flush_every
        self._flush: LoopingCall | None = None
        self.host = host
        self.port = port
        self.server_name = server_name
        self._identity_loader = identity_loader
        self.settings = settings
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._client: ClientService | None = None
        self._creator: ResumingCreator | None = None
        self._current: UplinkProtocol | None = None
        self.last_connected_at: float | None = None
        self.connections = 0
        self.last_handshake_bytes: int | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.counters = LinkCounters()

    def startService(self) -> None:
        # Load the certificates first: a missing or bad file fails the start with a clear
        # message, and the supervisor retries (the unit may be provisioned later).
        identity = self._identity_loader()
        self._creator = ResumingCreator.for_device(self.server_name, identity)
        tcp = HostnameEndpoint(self.reactor, self.host, self.port, timeout=self._connect_timeout)
        endpoint = wrapClientTLS(self._creator, CountingEndpoint(tcp, self._count))
        factory = Factory.forProtocol(lambda: UplinkProtocol(self._make_link))
        self._client = ClientService(endpoint, factory, retryPolicy=self._backoff,
                                     clock=self.reactor)
        super().startService()  # type: ignore[no-untyped-call]
        self._check_budget(starting=True)
        self._flush = LoopingCall(self._every_minute)
        self._flush.clock = self.reactor
        self._flush.start(self._flush_every, now=False)
        self._client.startService()
        self.log.info("uplink to {host}:{port} (server name {name}) started",
                      host=self.host, port=self.port, name=self.server_name)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._flush is not None and self._flush.running:
            self._flush.stop()
        client, self._client = self._client, None
        if client is None:
            self.traffic.flush()
            return defer.succeed(None)
        d: defer.Deferred[None] = client.stopService()
        return d.addBoth(self._flushed)

    def _every_minute(self) -> None:
        self.traffic.flush()
        self._check_budget()

    def _check_budget(self, starting: bool = False) -> None:
        """Re-pace against the monthly budget; an event at 80% and at 100% (once a month)."""
        if self.budget.budget_bytes <= 0:
            return
        now = self.reactor.seconds()
        try:
            self.month_bytes = self.traffic.month_total(now)
        except TrafficError as exc:  # keep the last known use
            self.log.warn("data budget: cannot read the month's use: {error}", error=str(exc))
            return
        self.stretch = self.budget.stretch(self.month_bytes, now)
        crossed = self.budget.crossed(self.month_bytes, now)
        if starting:
            return  # crossed before this start: the previous run reported it
        mb = self.budget.budget_bytes / 1e6
        for threshold in crossed:
            detail = (f"{threshold:.0%} of the {mb:g} MB monthly data budget used "
                      f"({self.month_bytes:,} bytes); uploads and heartbeats "
                      f"{self.stretch:g}x rarer")
            self.log.warn("data budget: {detail}", detail=detail)
            try:
                self.journal.append_event(Event(0, int(now), AlarmKind.DATA_BUDGET, detail))
            except JournalError as exc:
                self.log.warn("data budget event not journalled: {error}", error=str(exc))

    def _flushed(self, result: Any) -> Any:
        self.traffic.flush()  # after the last connection's bytes are counted
        return result

    # -- connections -------------------------------------------------------------------------

    def _count(self, sent: int, received: int) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.traffic.count(sent=sent, received=received)

    def _make_link(self, proto: UplinkProtocol) -> Link:
        self._current = proto
        return Link(
            self.journal, self.settings, self.reactor, proto.write, proto.abort,
            on_ready=lambda welcome: self._ready(proto, welcome),
            on_error=self._backoff.refused, commands=self._commands, counters=self.counters,
            expected_meters=self._expected_meters, stretch=lambda: self.stretch,
            firmware=self._firmware,
        )

    def _ready(self, proto: UplinkProtocol, welcome: Welcome) -> None:
        self._backoff.welcomed()
        self.connections += 1
        self.last_connected_at = self.reactor.seconds()
        resumed = False
        connection = proto.tls_connection()
        if connection is not None and self._creator is not None:
            resumed = self._creator.remember(connection)
        counter = raw_counter(proto.transport)
        sent = received = 0
        if counter is not None:
            sent, received = counter.sent, counter.received
            self.last_handshake_bytes = sent + received
        self.log.info(
            "uplink connected ({kind} TLS session; {n} bytes on the wire up to Welcome: "
            "{sent} sent, {received} received)",
            kind="resumed" if resumed else "new", n=sent + received, sent=sent,
            received=received,
        )

    @property
    def connected(self) -> bool:
        link = self._current.link if self._current is not None else None
        return link is not None and not link.closed and link.session.welcome is not None

    def upload_now(self) -> bool:
        """Send the journal's pending entries now; False when not connected to the cloud."""
        link = self._current.link if self._current is not None else None
        return link is not None and self.connected and link.upload_now()

    def status(self) -> UplinkStatus:
        if self.connected:
            self.last_connected_at = self.reactor.seconds()
        creator = self._creator
        return UplinkStatus(
            connected=self.connected,
            last_connected_at=self.last_connected_at,
            connections=self.connections,
            full_handshakes=creator.full_handshakes if creator else 0,
            resumed_handshakes=creator.resumed_handshakes if creator else 0,
            last_handshake_bytes=self.last_handshake_bytes,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            payload_sent=self.counters.payload_sent,
            payload_received=self.counters.payload_received,
            batches_sent=self.counters.batches_sent,
            records_sent=self.counters.records_sent,
            budget_bytes=self.budget.budget_bytes,
            month_bytes=self.month_bytes,
            budget_stretch=self.stretch,
        )
