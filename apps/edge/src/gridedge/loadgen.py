"""A bare gridwire edge over mutual TLS: to load-test and to check a cloud deployment.

Why it lives in gridedge: it is an edge, minus the unit's machinery (journal,
radio, supervision), and it connects exactly as the uplink does, with the
uplink's TLS resumption (gridedge.uplink.tls.ResumingCreator) and byte counter
(gridedge.uplink.counting) rather than copies of them; so the cloud's tests and
the benchmark (bench/bench_ingest.py) measure what a unit really sends.  In
gridcloud it would make the cloud package depend on the edge application; here
the arrows stay edge -> gridwire and tests/bench -> both.  The unit itself
never imports it.

It is a thin Twisted adapter around ``gridwire.EdgeSession``, like the uplink.

Tests: tests/cloud/test_cloud_server.py, tests/system/test_certificates.py (as their client),
tests/cloud/test_cloud_commands.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gridwire
from gridwire import (
    COMMAND_ACTIONS,
    Ack,
    AlarmKind,
    Command,
    CommandResult,
    CommandStatus,
    Error,
    ErrorCode,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    ReadingBatch,
    Welcome,
)
from OpenSSL import SSL
from twisted.internet import defer, endpoints, ssl
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridedge.uplink.counting import ByteCounter, CountingEndpoint, raw_counter
from gridedge.uplink.tls import ResumingCreator

log = Logger(namespace="gridedge.loadgen")


def client_tls(hostname: str, ca: Path, cert: Path, key: Path) -> ResumingCreator:
    """The edge's TLS options: trust only ``ca``, check ``hostname``, present cert/key."""
    authority = ssl.Certificate.loadPEM(ca.read_bytes())
    mine = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]
        cert.read_bytes() + b"\n" + key.read_bytes()
    )
    return ResumingCreator(
        ssl.optionsForClientTLS(hostname, trustRoot=authority, clientCertificate=mine)
    )


class EdgeClient(Protocol):
    """One edge connection: Hello, then uploads; Deferreds for what tests wait on."""

    def __init__(
        self,
        hello: Hello,
        tls: ResumingCreator | None = None,
        limits: gridwire.Limits | None = None,
        *,
        answer_commands: bool = False,
        clock: Callable[[], float] = time.time,
        references: gridwire.EdgeReferences | None = None,
    ) -> None:
        self.session = gridwire.EdgeSession(limits=limits, references=references)
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
        #: every Command received, in order (re-deliveries included)
        self.commands: list[Command] = []
        #: every FirmwareOffer and FirmwareChunk received, in order (the cloud's firmware tests)
        self.offers: list[FirmwareOffer] = []
        self.chunks: list[FirmwareChunk] = []
        #: answer each Command at once: ACCEPTED, then a COMMAND_SUCCEEDED outcome event
        #: (as a unit that stored and executed it would; the benchmark's stand-in units)
        self.answer_commands = answer_commands
        self._clock = clock
        #: the next journal sequence number this edge uses (after Welcome)
        self.next_seq = 1
        self._outcomes: list[EventReport] = []  # waiting for room in the in-flight window

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
                self.next_seq = max(self.next_seq, message.last_acked_seq + 1)
                if self._tls is not None:
                    self.resumed = self._tls.remember(self._tx.getHandle())
                self.welcome.callback(message)
            elif isinstance(message, Ack):
                self.acked = message.up_to_seq
                self._send_outcomes()
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
            elif isinstance(message, FirmwareOffer):
                self.offers.append(message)
            elif isinstance(message, FirmwareChunk):
                self.chunks.append(message)
            elif isinstance(message, Command):
                self.commands.append(message)
                if self.answer_commands:
                    self.answer(message)

    def answer(self, command: Command, reason: str = "done by loadgen") -> None:
        """Accept ``command`` and report it succeeded, in the journal's sequence space."""
        self.send(CommandResult(command_id=command.command_id, status=CommandStatus.ACCEPTED))
        action = COMMAND_ACTIONS.get(command.kind, f"kind-{command.kind}")
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self._outcomes.append(EventReport(seq=seq, meter_id=command.meter_id,
                                          time=int(self._clock()),
                                          kind=AlarmKind.COMMAND_SUCCEEDED,
                                          detail=f"{command.command_id} {action} {reason}"))
        self._send_outcomes()

    def _send_outcomes(self) -> None:
        """Outcome events in sequence order, within the session's in-flight window."""
        while self._outcomes and self.session.in_flight < self.session.window:
            self.send(self._outcomes.pop(0))

    def upload(self, batch: ReadingBatch) -> defer.Deferred[int]:
        """Send a batch; fires with the ack that covers it."""
        d: defer.Deferred[int] = defer.Deferred()
        self.next_seq = max(self.next_seq, batch.last_seq + 1)
        self._waiters.append((batch.last_seq, d))
        self._tx.write(self.session.send(batch))
        return d

    def send(self, message: gridwire.Message) -> None:
        self._tx.write(self.session.send(message))

    def send_raw(self, data: bytes) -> None:
        self._tx.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason if reason is not None else Failure(ConnectionDone())  # type: ignore[no-untyped-call]
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
        # OpenSSL's error list [(lib, func, reason), ...]: the reasons say it.
        args = getattr(reason.value, "args", ())
        errors = args[0] if args else None
        if isinstance(errors, list):
            reasons = [str(e[2]) for e in errors if len(e) >= 3 and e[2]]
            if reasons:
                return "TLS: " + "; ".join(reasons)
        return f"TLS: {reason.value}"
    return reason.getErrorMessage()


async def connect(
    reactor: Any,
    endpoint: str,
    tls: ResumingCreator,
    hello: Hello,
    counting: bool = False,
    limits: gridwire.Limits | None = None,
    answer_commands: bool = False,
    references: gridwire.EdgeReferences | None = None,
) -> tuple[EdgeClient, ByteCounter | None]:
    """Open a TLS connection and send Hello; returns the client (wait on ``.welcome``) and,
    with ``counting``, the connection's raw byte counter (the stack the uplink uses).
    ``references``: a version 3 table kept across this edge's connections (the Hello must
    offer it: ``references_offer``)."""
    client = EdgeClient(hello, tls, limits, answer_commands=answer_commands,
                        references=references)
    tcp = endpoints.clientFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
    await endpoints.wrapClientTLS(tls, CountingEndpoint(tcp)).connect(
        Factory.forProtocol(lambda: client))
    return client, raw_counter(client.transport) if counting else None
