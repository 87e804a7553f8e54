"""One uplink connection's logic: what to send next, the window, heartbeats, dead peers.

Why separate from the Twisted protocol: this is where the rules live (resume
after the cloud's last acknowledged sequence, a bounded in-flight window,
batching, heartbeats), and it must be tested fast and deterministically with
``task.Clock`` and a list as the "transport".  It owns a gridwire
``EdgeSession`` and talks to the outside through three callables: ``write``,
``close`` (abort the connection) and the injected clock.

Sending policy, tuned for a metered cellular link with ~1 s round trips:

* After Welcome the journal forgets everything <= ``last_acked_seq`` and sending
  resumes at ``last_acked_seq + 1`` (or the oldest entry still kept, if the size
  bound evicted some).
* Up to ``min(Welcome.max_in_flight, max_in_flight)`` uploads are
  unacknowledged at once; with batches of ``batch_records`` readings that is
  window x batch per round trip (4 x 500 readings/s by default, far above what
  1000 meters produce), while a cut connection wastes at most the window.
* A batch holds at most ``batch_records`` readings, and never more than the
  cloud accepts (``EdgeSession.batch_limit``: Welcome's max_batch_records and
  max_frame_size), so a cloud with smaller limits gets batches it can take.
* When to upload is gridedge.uplink.schedule's rule (``upload_deadline`` > 0,
  the default): readings wait until their interval's expected readings are in
  or the oldest has waited ``upload_deadline`` seconds; events and command
  results go at once.  Whatever is pending at Welcome (a backlog after a cut)
  goes at once.  With ``upload_deadline = 0`` the older rule applies: a full
  batch goes at once, a partial one waits up to ``batch_linger`` seconds.
* A Ping goes when nothing was sent for ``heartbeat`` seconds (keeps cellular
  NAT mappings alive; uploads reset the timer, so a heartbeat longer than the
  upload cycle means no pings while data flows); when nothing at all arrives
  for ``dead_after`` seconds
  the peer is declared dead and the connection aborted, so the reconnect
  logic takes over instead of waiting for TCP's own timeouts (hours).

Tests: tests/edge/test_uplink_link.py, tests/edge/test_uplink_schedule.py,
tests/edge/test_uplink_budget.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gridwire import (
    SUPPORTED_VERSIONS,
    Ack,
    ChunkRequest,
    Command,
    CommandResult,
    CommandStatus,
    EdgeSession,
    Error,
    ErrorCode,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareStatus,
    Hello,
    IntervalRecord,
    Limits,
    Message,
    Ping,
    Pong,
    ProtocolError,
    ReadingBatch,
    State,
    Welcome,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Event, Journal, JournalError
from gridedge.uplink.schedule import UploadSchedule


@dataclass(slots=True)
class LinkCounters:
    """What the unit's connections carried, summed over all of them (the uplink service owns
    one and shows it in health): gridwire frame bytes without TLS, and uploads."""

    payload_sent: int = 0
    payload_received: int = 0
    batches_sent: int = 0
    records_sent: int = 0


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The knobs of one connection: what Hello says, and [uplink] values (whose defaults
    live in gridedge.config.UplinkConfig, only there)."""

    firmware_version: str
    boot_slot: str
    heartbeat: float
    dead_after: float
    welcome_timeout: float
    max_in_flight: int
    batch_records: int
    batch_linger: float
    upload_deadline: float = 0.0

    @classmethod
    def from_config(cls, edge: EdgeConfig, uplink: UplinkConfig) -> LinkSettings:
        return cls(
            firmware_version=edge.firmware_version,
            boot_slot=edge.boot_slot,
            heartbeat=uplink.heartbeat,
            dead_after=uplink.dead_after,
            welcome_timeout=uplink.connect_timeout,
            max_in_flight=uplink.max_in_flight,
            batch_records=uplink.batch_records,
            batch_linger=uplink.batch_linger,
            upload_deadline=uplink.upload_deadline,
        )


class CommandReceiver(Protocol):
    """Where commands from the cloud go (gridedge.commands.CommandExecutor fits)."""

    def accept(self, commands: Sequence[Command]) -> list[int]:
        """Store ``commands`` durably; the ids to answer ACCEPTED.  Raises when it cannot."""


class FirmwareReceiver(Protocol):
    """Where offers and chunks go (gridedge.firmware.Agent fits); it sends through the link's
    :meth:`Link.send_message` and asks :meth:`Link.uploads_idle` before each chunk request."""

    def attach(self, port: Link) -> None:
        """The session is ready (Welcome)."""

    def detach(self, port: Link) -> None:
        """The connection is gone."""

    def offered(self, offer: FirmwareOffer) -> None: ...

    def chunk(self, chunk: FirmwareChunk) -> None: ...

    def wake(self) -> None:
        """An Ack came: the link may be idle now."""


class Link:
    """The application side of one connection, driven by its adapter.

    Commands: those of one read from the socket are handed to the ``commands``
    receiver together (one durable write), and each is answered
    ``CommandResult(ACCEPTED)`` only once the receiver stored it.  If it cannot,
    nothing is answered and the cloud sends them again on the next session.  Without
    a receiver, commands are answered ``UNSUPPORTED``.
    """

    log = Logger()

    def __init__(
        self,
        journal: Journal,
        settings: LinkSettings,
        clock: IReactorTime,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        *,
        on_ready: Callable[[Welcome], None] = lambda welcome: None,
        on_error: Callable[[Error], None] = lambda error: None,
        limits: Limits | None = None,
        commands: CommandReceiver | None = None,
        counters: LinkCounters | None = None,
        expected_meters: Callable[[], int] = lambda: 0,
        stretch: Callable[[], float] = lambda: 1.0,
        firmware: FirmwareReceiver | None = None,
    ) -> None:
        self._stretch = stretch
        self._firmware = firmware
        self.journal = journal
        self._commands = commands
        self._received: list[Command] = []
        self.counters = counters if counters is not None else LinkCounters()
        self.settings = settings
        self.clock = clock
        self._write = write
        self._close = close
        self._on_ready = on_ready
        self._on_error = on_error
        self.session = EdgeSession(limits=limits if limits is not None else Limits())
        self.next_send = 1
        self.sent_batches = 0
        self.sent_records = 0
        self.closed = False
        self._heartbeat = settings.heartbeat
        self._nonce = 0
        self._linger: IDelayedCall | None = None
        self._linger_done = False
        self._ping: IDelayedCall | None = None
        self._dead: IDelayedCall | None = None
        self._remove_listener: Callable[[], None] | None = None
        self.schedule = UploadSchedule(settings.upload_deadline, settings.batch_records,
                                       expected_meters)
        self._scanned = 0  # the last journal seq the schedule has seen
        self._flush_to = 0  # uploads are due up to this seq
        self._deadline: IDelayedCall | None = None

    # -- events from the adapter -------------------------------------------------------------

    def connected(self) -> None:
        """The (TLS) connection is up: say Hello and wait for Welcome."""
        self._dead = self.clock.callLater(self.settings.welcome_timeout, self._timed_out,
                                          "no Welcome")
        now = self.clock.seconds()
        self._send(Hello(
            min_version=min(SUPPORTED_VERSIONS),
            max_version=max(SUPPORTED_VERSIONS),
            firmware_version=self.settings.firmware_version,
            boot_slot=self.settings.boot_slot,
            edge_time=int(now) if now > 1e9 else 0,
        ))

    def data_received(self, data: bytes) -> None:
        """Bytes from the cloud: feed the session, act on each message."""
        if self.closed:
            return
        self.counters.payload_received += len(data)
        try:
            messages = self.session.receive_data(data)
            for message in messages:
                self._handle(message)
                if self.closed:
                    return
            if self._received:
                self._accept_commands()
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        except JournalError as exc:
            # The journal is restarting (its supervisor retries); drop the connection and
            # let the reconnect resume from the cloud's last acknowledged sequence.
            self.log.warn("uplink: journal unavailable ({error}); reconnecting later",
                          error=str(exc))
            self._abort()
            return
        if self.session.state is State.READY:
            self._alive()

    def connection_lost(self) -> None:
        """The connection is gone (for any reason): stop every timer."""
        self.closed = True
        for call in (self._linger, self._ping, self._dead, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._linger = self._ping = self._dead = self._deadline = None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._firmware is not None:
            self._firmware.detach(self)

    # -- messages ----------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        if isinstance(message, Welcome):
            self._welcome(message)
        elif isinstance(message, Ack):
            deleted = self.journal.ack(message.up_to_seq)
            self.log.debug("ack up to {seq}: {n} entries done", seq=message.up_to_seq, n=deleted)
            self.pump()
            if self._firmware is not None:
                self._firmware.wake()
        elif isinstance(message, Ping):
            self._send(Pong(nonce=message.nonce))
        elif isinstance(message, Pong):
            pass  # _alive() already noted it
        elif isinstance(message, Command):
            if self._commands is None:  # a unit built without an executor (tools, tests)
                self._send(CommandResult(command_id=message.command_id,
                                         status=CommandStatus.UNSUPPORTED,
                                         detail="this gridedge executes no commands"))
            else:
                self._received.append(message)
        elif isinstance(message, Error):
            self.log.warn("cloud closed the session: {code} {detail}{hint}",
                          code=getattr(message.code, "name", message.code), detail=message.detail,
                          hint=f" (retry after {message.retry_after} s)"
                          if message.retry_after else "")
            self._on_error(message)  # the reconnect policy decides how long to wait
            self._abort()
        elif isinstance(message, FirmwareOffer):
            if self._firmware is None:  # allowed: the edge simply never requests chunks
                self.log.info("firmware {version} offered; this gridedge takes no updates",
                              version=message.version)
            else:
                self._firmware.offered(message)
        elif isinstance(message, FirmwareChunk) and self._firmware is not None:
            self._firmware.chunk(message)

    def _accept_commands(self) -> None:
        received, self._received = self._received, []
        assert self._commands is not None
        try:
            ids = self._commands.accept(received)
        except Exception as exc:  # the store failed: say nothing, the cloud sends them again
            self.log.warn("uplink: {n} command(s) could not be stored ({error}); not accepted",
                          n=len(received), error=str(exc))
            return
        for command_id in ids:
            self._send(CommandResult(command_id=command_id, status=CommandStatus.ACCEPTED))

    def upload_now(self) -> bool:
        """Send what the journal holds without waiting for a batch to fill; False if the
        session is not ready."""
        if self.closed or self.session.state is not State.READY:
            return False
        self._linger_done = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        # It overrides the metered schedule too: everything journalled so far is owed now.
        self._scanned = self._flush_to = self.journal.next_seq - 1
        self.schedule.reset()
        self.pump()
        return True

    def _welcome(self, welcome: Welcome) -> None:
        acked = welcome.last_acked_seq
        if acked >= self.journal.next_seq:
            self.log.warn(
                "cloud has seen seq {acked} but this journal only issued up to {last}: "
                "renumbering pending entries after it (was the data partition wiped?)",
                acked=acked, last=self.journal.next_seq - 1,
            )
            self.journal.rebase(acked)
        else:
            self.journal.ack(acked)
        first = self.journal.first_pending_seq
        self.next_send = max(acked + 1, first if first is not None else acked + 1)
        # A backlog (entries kept over a cut or a restart) has waited already: it goes now.
        self._scanned = self._flush_to = self.journal.next_seq - 1
        self._heartbeat = min(self.settings.heartbeat, float(welcome.heartbeat_interval))
        self.log.info(
            "uplink ready: protocol v{version}, cloud has up to seq {acked}, "
            "{pending} entries to send",
            version=welcome.version, acked=acked, pending=self.journal.pending,
        )
        self._on_ready(welcome)
        self._remove_listener = self.journal.on_append(self.pump)
        self._schedule_ping()
        self.pump()
        if self._firmware is not None:
            self._firmware.attach(self)

    # -- what the update agent asks (gridedge.firmware.Port) ---------------------------------

    def uploads_idle(self) -> bool:
        """Readings first: True when no upload is unacknowledged and none is owed now (the
        schedule's due entries are sent; entries waiting for their deadline are not owed)."""
        if self.closed or self.session.state is not State.READY or self.session.in_flight:
            return False
        if self.settings.upload_deadline > 0:
            return self.next_send > self._flush_to
        return self.next_send >= self.journal.next_seq

    def send_message(self, message: ChunkRequest | FirmwareStatus) -> None:
        """Send a message of the update agent on this connection (dropped once closed)."""
        if self.closed or self.session.state is not State.READY:
            return
        try:
            self._send(message)
        except ProtocolError as exc:
            self._protocol_error(exc)

    # -- sending -----------------------------------------------------------------------------

    @property
    def window(self) -> int:
        return min(self.session.window, self.settings.max_in_flight)

    def pump(self) -> None:
        """Send uploads while the window has room and the journal has entries."""
        if self.closed or self.session.state is not State.READY:
            return
        metered = self.settings.upload_deadline > 0
        try:
            if metered and not self._upload_due():
                return
            size = min(self.settings.batch_records, self.session.batch_limit)
            while self.session.in_flight < self.window:
                entries = self.journal.read(self.next_send, size)
                if metered:
                    entries = [e for e in entries if e[0] <= self._flush_to]
                if not entries:
                    return
                seq, first = entries[0]
                if isinstance(first, Event):
                    self._send(EventReport(seq=seq, meter_id=first.meter_id, time=first.time,
                                           kind=first.kind, detail=first.detail))
                    self.next_send = seq + 1
                    continue
                run: list[IntervalRecord] = []
                for s, entry in entries:
                    if s != seq + len(run) or not isinstance(entry, IntervalRecord):
                        break
                    run.append(entry)
                full = metered or len(run) >= size or len(run) < len(entries)
                if not full and not self._linger_done and self.settings.batch_linger > 0:
                    if self._linger is None:
                        self._linger = self.clock.callLater(
                            self.settings.batch_linger, self._linger_expired)
                    return
                self._send(ReadingBatch(first_seq=seq, records=run))
                self.sent_batches += 1
                self.sent_records += len(run)
                self.counters.batches_sent += 1
                self.counters.records_sent += len(run)
                self.next_send = seq + len(run)
                self._linger_done = False
        except JournalError as exc:
            self.log.warn("uplink cannot read the journal: {error}", error=str(exc))
        except ProtocolError as exc:
            self._protocol_error(exc)

    def _upload_due(self) -> bool:
        """The upload schedule's verdict: True while entries up to ``_flush_to`` are owed."""
        if self.next_send <= self._flush_to:
            return True
        now = self.clock.seconds()
        self.schedule.stretch = self._stretch()
        while True:  # show the schedule what arrived since it last looked
            entries = self.journal.read(max(self._scanned + 1, self.next_send), 1000)
            for seq, entry in entries:
                self.schedule.add(entry, now)
                self._scanned = seq
            if len(entries) < 1000:
                break
        if self.schedule.due(now):
            self.schedule.reset()
            self._flush_to = self._scanned
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
            return True
        wait = self.schedule.wait(now)
        if wait is not None and (self._deadline is None or not self._deadline.active()):
            self._deadline = self.clock.callLater(wait, self._deadline_reached)
        return False

    def _deadline_reached(self) -> None:
        self._deadline = None
        self.pump()

    def _linger_expired(self) -> None:
        self._linger = None
        self._linger_done = True
        self.pump()

    def _send(self, message: Message) -> None:
        data = self.session.send(message)
        self.counters.payload_sent += len(data)
        self._write(data)
        if not isinstance(message, Hello):
            self._schedule_ping()

    # -- liveness ----------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        """(Re)arm the heartbeat: a Ping goes after ``heartbeat`` seconds of sending nothing."""
        if self.closed or self.session.state is not State.READY:
            return
        heartbeat = self._heartbeat * self._stretch()  # the data budget may stretch it
        if self._ping is not None and self._ping.active():
            self._ping.reset(heartbeat)
        else:
            self._ping = self.clock.callLater(heartbeat, self._send_ping)

    def _send_ping(self) -> None:
        self._ping = None
        self._nonce = (self._nonce + 1) % (1 << 32)
        self._send(Ping(nonce=self._nonce))

    def _alive(self) -> None:
        """Something arrived: the peer is alive; re-arm the dead-peer timer."""
        timeout = (self.settings.dead_after * self._stretch()  # as long as heartbeats stretch
                   if self.session.state is State.READY else self.settings.welcome_timeout)
        if self._dead is not None and self._dead.active():
            self._dead.reset(timeout)
        else:
            self._dead = self.clock.callLater(timeout, self._timed_out, "silence")

    def _timed_out(self, why: str) -> None:
        self._dead = None
        self.log.warn("uplink: cloud is not answering ({why}); dropping the connection", why=why)
        with contextlib.suppress(ProtocolError):
            self._write(self.session.send(Error(code=ErrorCode.TIMEOUT, detail=why)))
        self._abort()

    # -- failure -----------------------------------------------------------------------------

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.log.error("uplink protocol error ({side}): {code} {error}",
                       side=exc.side.value, code=exc.code.name, error=str(exc))
        error = Error(code=exc.code, detail=str(exc)[:255])
        with contextlib.suppress(ProtocolError):
            self._write(self.session.send(error))
        # The cloud and this unit disagree: reconnecting at once would disagree again.
        self._on_error(error)
        self._abort()

    def _abort(self) -> None:
        if not self.closed:
            self.connection_lost()
            self._close()

