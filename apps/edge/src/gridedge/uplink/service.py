"""The uplink as a Twisted service: reconnect forever, backing off until the cloud admits us.

Why ClientService: it owns the reconnect loop (one connection at a time, a
retry policy, clean stop).  The delays come from
:class:`~gridedge.uplink.backoff.ReconnectPolicy`, which this service tells
about each Welcome and each Error from the cloud: the backoff resets only on
Welcome, and a refused unit waits long (see that module).

The service also owns the link's byte counts: every byte on the socket goes to
:class:`~gridedge.uplink.traffic.Traffic`, written once a minute and at stop.

Certificate renewal (:mod:`gridedge.uplink.renewal`): each connection asks the
renewal state which certificate to present (one TLS client per certificate, so a
resumed session never brings back the other one's identity); after Welcome, and
once a minute while connected, it sends a signing request when renewal is due,
and it hands the cloud's answer to the renewal state to check and keep.

Tests: tests/edge/test_uplink_tls.py (real TLS over loopback), tests/edge/test_uplink_backoff.py,
tests/system/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridwire import AlarmKind, CertificateIssued, EdgeReferences, Error, ErrorCode, Welcome
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

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
from gridedge.uplink.renewal import Renewal, RenewalRejected
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
    #: when the certificate in use expires (unix seconds; None: unknown), and whether a
    #: renewed one waits for its first welcomed connection
    certificate_expires_at: float | None = None
    certificate_renewed_waiting: bool = False


@implementer(IOpenSSLClientConnectionCreator)
class _ChosenCreator:
    """The TLS client of each connection, chosen when it starts (current or renewed
    certificate): the endpoint keeps one creator, the service decides behind it."""

    def __init__(self, choose: Callable[[], ResumingCreator]) -> None:
        self._choose = choose

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self._choose().clientConnectionForTLS(tlsProtocol)


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
        renewal: Renewal | None = None,
        tls_version: str = "1.3",
    ) -> None:
        self._tls_version = tls_version
        self._firmware = firmware
        self._renewal = renewal
        self._renewed_creator: ResumingCreator | None = None
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
        # gridwire version 3: each meter's last acknowledged record, kept across reconnects
        # (not restarts: the first connection after one starts with an empty table)
        self._references = EdgeReferences()

    def startService(self) -> None:
        # Load the certificates first: a missing or bad file fails the start with a clear
        # message, and the supervisor retries (the unit may be provisioned later).
        identity = self._identity_loader()
        self._current_creator = ResumingCreator.for_device(
            self.server_name, identity, tls12=self._tls_version == "1.2")
        self._creator = self._current_creator
        tcp = HostnameEndpoint(self.reactor, self.host, self.port, timeout=self._connect_timeout)
        endpoint = wrapClientTLS(_ChosenCreator(self._choose_creator),
                                 CountingEndpoint(tcp, self._count))
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
        link = self._current.link if self._current is not None else None
        if link is not None and self.connected:
            self._maybe_renew(link)

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
            on_error=self._refused, commands=self._commands, counters=self.counters,
            expected_meters=self._expected_meters, stretch=lambda: self.stretch,
            firmware=self._firmware,
            on_certificate=self._certificate_issued,
            references=self._references,
            budget=lambda: (self.budget.budget_bytes, self.month_bytes),
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
        if proto.link is not None:
            self._renewal_welcomed(proto.link)

    def _refused(self, error: Error) -> None:
        """The session ended with ``error``: the backoff policy decides the wait, except for a
        refusal of the old certificate while a renewed one waits.  That is what a cut after
        the cloud confirmed the renewal (and revoked the old serial) but before its Welcome
        arrived looks like: the next attempt presents the renewed certificate at once
        instead of waiting out the long backoff of a revoked unit."""
        renewal = self._renewal
        if (renewal is not None and error.code == ErrorCode.UNAUTHORIZED
                and renewal.waiting_after_old_refused()):
            self.log.warn("certificate renewal: the old certificate was refused ({detail}); "
                          "presenting the renewed one next", detail=error.detail)
            return
        self._backoff.refused(error)

    # -- certificate renewal (gridedge.uplink.renewal) ---------------------------------------

    def _choose_creator(self) -> ResumingCreator:
        """The TLS client of the connection starting now: the renewed certificate's while one
        waits (but not twice in a row without a Welcome), else the one in use."""
        renewal = self._renewal
        renewed = False
        if renewal is not None:
            try:
                renewed = renewal.use_renewed()
                if renewed and self._renewed_creator is None:
                    identity = renewal.store.renewed()
                    if identity is None:
                        renewed = False
                    else:
                        self._renewed_creator = ResumingCreator.for_device(
                            self.server_name, identity, tls12=self._tls_version == "1.2")
            except Exception as exc:  # a damaged renewed file: keep to the certificate in use
                self.log.warn("certificate renewal: cannot load the renewed certificate "
                              "({error}); using the one in use", error=str(exc))
                renewed = False
            renewal.attempt(renewed)
        chosen = self._renewed_creator if renewed else self._current_creator
        assert chosen is not None
        self._creator = chosen
        return chosen

    def _renewal_welcomed(self, link: Link) -> None:
        renewal = self._renewal
        if renewal is None:
            return
        try:
            if renewal.welcomed():
                self._current_creator = self._renewed_creator or ResumingCreator.for_device(
                    self.server_name, renewal.store.current(), tls12=self._tls_version == "1.2")
                self._renewed_creator = None
                self.log.info("certificate renewal: the renewed certificate was welcomed; it "
                              "is the one in use now, the old one is dropped")
        except Exception as exc:  # the files could not be switched: next connection retries
            self.log.error("certificate renewal: could not switch to the renewed certificate: "
                           "{error}", error=str(exc))
        self._maybe_renew(link)

    def _maybe_renew(self, link: Link) -> None:
        renewal = self._renewal
        if renewal is None or link.certificate_requested:
            return
        try:
            if not renewal.due(self.reactor.seconds()):
                return
            csr = renewal.request()
        except Exception as exc:
            self.log.error("certificate renewal: cannot make the request: {error}",
                           error=str(exc))
            return
        if link.request_certificate(csr):
            self.log.info("certificate renewal: the certificate expires soon; asked the cloud "
                          "to sign a new key")

    def _certificate_issued(self, message: CertificateIssued) -> None:
        renewal = self._renewal
        if renewal is None:
            return
        try:
            certificate = renewal.answer(message, self.reactor.seconds())
        except RenewalRejected as exc:
            self.log.warn("certificate renewal: answer not kept: {why}", why=str(exc))
            return
        except Exception as exc:  # /data failed: the request is repeated on a later connection
            self.log.error("certificate renewal: could not keep the new certificate: {error}",
                           error=str(exc))
            return
        self._renewed_creator = None  # made from the files at the next connection
        self.log.info(
            "certificate renewal: new certificate serial {serial} (valid until {until}) kept; "
            "presented from the next connection", serial=certificate.serial_number,
            until=certificate.not_valid_after_utc.isoformat())

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
            **self._certificate_status(),
        )

    def _certificate_status(self) -> dict[str, Any]:
        if self._renewal is None:
            return {}
        try:
            store = self._renewal.store
            return {
                "certificate_expires_at":
                    store.current_certificate().not_valid_after_utc.timestamp(),
                "certificate_renewed_waiting": store.renewed_certificate() is not None,
            }
        except Exception:  # unreadable files are reported by the connection attempts
            return {}
