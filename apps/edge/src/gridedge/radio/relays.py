"""Relay commands to meters: sent with an id, re-sent on timeout or a transient failure.

Why apart: a relay command's life (attempts, timeouts, the outcome the caller
waits for) has nothing to do with gap filling; it shares only the command ids
and the port (:class:`~gridedge.radio.outbox.Outbox`) and the registry, where
a confirmation records the relay position even when it comes late or twice.

A command is re-sent with the same id on timeout or on NO_RESPONSE/BUSY, at
most ``relay_attempts`` sends in all, and ends in a :class:`RelayOutcome`; the
Deferred never errbacks.

Tests: tests/radio/test_link.py (test_relay_*, test_stop_fails_pending_relays).
"""

from __future__ import annotations

from dataclasses import dataclass

from gridradio import RelayCommand, RelayConfirm, RelayState, RelayStatus
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .clock import Clock, DelayedCall
from .counters import LinkCounters
from .outbox import Outbox
from .registry import MeterRegistry
from .settings import LinkSettings

__all__ = ["RelayCommands", "RelayOutcome"]


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """How a relay command ended.

    ``ok`` is True only when the module confirmed the switch; ``reason`` is
    "confirmed", "timeout", "no-response", "busy", "unknown-meter", "refused"
    or "link-stopped"; ``relay_open`` is the position the module reported
    (None when unknown).
    """

    meter_id: int
    open: bool
    ok: bool
    reason: str
    relay_open: bool | None
    attempts: int


@dataclass(slots=True)
class _PendingRelay:
    cmd_id: int
    meter_id: int
    open: bool
    timeout: float
    max_attempts: int
    deferred: Deferred[RelayOutcome]
    attempts: int = 0
    timer: DelayedCall | None = None


_REASONS = {
    RelayStatus.NO_RESPONSE: "no-response",
    RelayStatus.UNKNOWN_METER: "unknown-meter",
    RelayStatus.BUSY: "busy",
    RelayStatus.REFUSED: "refused",
}


class RelayCommands:
    """Relay commands in flight, by command id."""

    log = Logger()

    def __init__(
        self,
        clock: Clock,
        settings: LinkSettings,
        registry: MeterRegistry,
        outbox: Outbox,
        counters: LinkCounters,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.registry = registry
        self.outbox = outbox
        self.counters = counters
        self._pending: dict[int, _PendingRelay] = {}

    def send(
        self, meter_id: int, open: bool, timeout: float | None, attempts: int | None
    ) -> Deferred[RelayOutcome]:
        s = self.settings
        pending = _PendingRelay(
            cmd_id=self.outbox.new_id(),
            meter_id=meter_id,
            open=open,
            timeout=s.relay_timeout if timeout is None else timeout,
            max_attempts=max(1, s.relay_attempts if attempts is None else attempts),
            deferred=Deferred(),
        )
        self._pending[pending.cmd_id] = pending
        self.counters.relay_commands += 1
        self._attempt(pending)
        return pending.deferred

    def on_confirm(self, frame: RelayConfirm, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        if frame.status == RelayStatus.OK and frame.relay != RelayState.UNKNOWN:
            meter.relay_open = frame.relay == RelayState.OPEN
            meter.seen(now)
        pending = self._pending.get(frame.cmd_id)
        if not (
            pending is not None
            and pending.meter_id == frame.meter_id
            and pending.open == frame.open
        ):
            self.counters.relay_late_confirms += 1
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        relay_open = None if frame.relay == RelayState.UNKNOWN else frame.relay == RelayState.OPEN
        if frame.status == RelayStatus.OK:
            self._finish(pending, True, "confirmed", relay_open)
        elif (
            frame.status in (RelayStatus.NO_RESPONSE, RelayStatus.BUSY)
            and pending.attempts < pending.max_attempts
        ):
            pending.timer = self.clock.callLater(
                self.settings.relay_retry_delay, self._attempt, pending
            )
        else:
            self._finish(pending, False, _REASONS[frame.status], relay_open)

    def stop(self) -> None:
        """End every pending command with reason "link-stopped"."""
        for pending in list(self._pending.values()):
            self._finish(pending, False, "link-stopped", None)

    def _attempt(self, pending: _PendingRelay) -> None:
        pending.attempts += 1
        pending.timer = self.clock.callLater(pending.timeout, self._timed_out, pending)
        self.outbox.send(RelayCommand(pending.cmd_id, pending.meter_id, pending.open))

    def _timed_out(self, pending: _PendingRelay) -> None:
        if self._pending.get(pending.cmd_id) is not pending:
            return
        if pending.attempts < pending.max_attempts:
            self._attempt(pending)
        else:
            self._finish(pending, False, "timeout", None)

    def _finish(
        self, pending: _PendingRelay, ok: bool, reason: str, relay_open: bool | None
    ) -> None:
        del self._pending[pending.cmd_id]
        self.outbox.release(pending.cmd_id)
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        outcome = RelayOutcome(
            meter_id=pending.meter_id,
            open=pending.open,
            ok=ok,
            reason=reason,
            relay_open=relay_open,
            attempts=pending.attempts,
        )
        self.log.info(
            "relay {action} of meter {meter}: {reason} after {n} attempt(s)",
            action="open" if pending.open else "close",
            meter=pending.meter_id,
            reason=reason,
            n=pending.attempts,
        )
        pending.deferred.callback(outcome)
