"""The radio link as a Twisted service: a serial port that is reopened whenever it goes away.

``RadioService`` owns one :class:`~gridedge.radio.link.RadioLink` for its whole
life (so the meter registry, pending polls and relay commands survive a cable
cut) and a serial port that comes and goes: when the device disappears (USB
adapter unplugged, gridsim restarted, the pty closed) the port is closed and
reopened with exponential back-off, from ``reopen_initial`` up to
``reopen_max`` seconds, until it opens again.

:class:`RadioProtocol` is deliberately thin: bytes to the link, nothing else.
An unexpected exception from the link is logged and counted and the bytes are
dropped; the port stays open, so no input can stop the link.

Tests: tests/radio/test_end_to_end.py, tests/radio/test_restarts.py.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .clock import Clock, DelayedCall
from .link import RadioLink
from .settings import LinkSettings
from .sink import RecordSink

__all__ = ["RadioProtocol", "RadioService"]


class RadioProtocol(Protocol):
    """Adapter from a serial transport to a :class:`RadioLink`."""

    log = Logger()

    def __init__(self, link: RadioLink, on_lost: Any) -> None:
        self.link = link
        self.on_lost = on_lost
        self.errors = 0

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.link.connected(self.transport.write)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.link.data_received(data)
        except Exception:
            self.errors += 1
            self.log.failure("radio link failed on {n} received bytes; bytes dropped", n=len(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link.disconnected()
        self.on_lost(reason)


class RadioService(Service):
    """Keeps the serial port to the radio module open and feeds it to a RadioLink.

    ``reactor`` must provide IReactorFDSet and IReactorTime (the global
    reactor does).  ``link`` is available before the service starts, so other
    parts (web page, uplink commands) can hold on to it.
    """

    log = Logger()

    def __init__(
        self,
        port_path: str,
        baudrate: int,
        sink: RecordSink,
        reactor: Clock,
        settings: LinkSettings | None = None,
        *,
        reopen_initial: float = 0.5,
        reopen_max: float = 30.0,
        stats_every: float = 300.0,
    ) -> None:
        self.port_path = port_path
        self.baudrate = baudrate
        self.reactor = reactor
        self.link = RadioLink(sink, reactor, settings)
        self.reopen_initial = reopen_initial
        self.reopen_max = reopen_max
        self.stats_every = stats_every
        self.opens = 0
        self._delay = reopen_initial
        self._port: Any = None
        self._reopen: DelayedCall | None = None
        self._closed: Deferred[None] | None = None
        self._stats_loop: LoopingCall | None = None

    @property
    def is_open(self) -> bool:
        """True while the serial port is open."""
        return self._port is not None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.link.start()
        if self.stats_every > 0:
            self._stats_loop = LoopingCall(self._log_stats)
            self._stats_loop.clock = self.reactor  # type: ignore[assignment]
            self._stats_loop.start(self.stats_every, now=False)
        self._open()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self._reopen = None
        self.link.stop()
        if self._port is None:
            return succeed(None)
        self._closed = Deferred()
        self._port.loseConnection()
        return self._closed

    def _open(self) -> None:
        self._reopen = None
        if not self.running:
            return
        from serial import SerialException
        from twisted.internet.serialport import SerialPort

        assert IReactorFDSet.providedBy(self.reactor)
        protocol = RadioProtocol(self.link, self._lost)
        try:
            self._port = SerialPort(  # type: ignore[no-untyped-call]
                protocol, self.port_path, self.reactor, baudrate=self.baudrate
            )
        except (SerialException, OSError, ValueError) as exc:
            self.log.info(
                "radio port {path} not available ({error}); retrying in {delay:.1f} s",
                path=self.port_path,
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                delay=self._delay,
            )
            self._schedule_reopen()
            return
        self.opens += 1
        self._delay = self.reopen_initial
        self.log.info(
            "radio port {path} open at {baud} baud", path=self.port_path, baud=self.baudrate
        )

    def _schedule_reopen(self) -> None:
        self._reopen = self.reactor.callLater(self._delay, self._open)
        self._delay = min(self.reopen_max, self._delay * 2)

    def _lost(self, reason: Failure) -> None:
        self._port = None
        if self._closed is not None:
            closed, self._closed = self._closed, None
            closed.callback(None)
            return
        if self.running:
            self.log.warn(
                "radio port {path} lost ({why}); reopening",
                path=self.port_path,
                why=reason.getErrorMessage(),
            )
            self._schedule_reopen()

    def _log_stats(self) -> None:
        s = self.link.stats()
        self.log.info(
            "radio: {meters} meters, {frames_ok} frames ok, {frames_dropped} dropped, "
            "{records_delivered} records delivered, {polls_sent} polls "
            "({poll_timeouts} timed out), {records_held} held, "
            "{intervals_owed} intervals owed by {meters_owed} meters",
            **s,
        )
