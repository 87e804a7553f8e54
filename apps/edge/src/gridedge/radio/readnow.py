"""Reading a meter now (a command from the cloud or the local page), not at its next interval.

Why apart from gap filling (:mod:`~gridedge.radio.backfill`): a poll there is
the link's own decision, paced and retried for ever; a read-now is someone's
request that wants one answer: did the meter answer, and with what.  It asks
the meter for its newest completed interval (one ``PollRequest``), and the
records in the answer go to the sink like any others (already delivered ones
are recognised there), so the reading shows up in the journal and the cloud.
The Deferred always fires with a :class:`ReadOutcome`, never an error.

Tests: tests/radio/test_link.py (test_read_now_*).
"""

from __future__ import annotations

from dataclasses import dataclass

from gridradio import INTERVAL_SECONDS, PollRequest, PollResponse, PollStatus
from twisted.internet.defer import Deferred, succeed

from .clock import Clock, DelayedCall
from .counters import LinkCounters
from .delivery import Delivery
from .outbox import Outbox
from .registry import MeterRegistry

__all__ = ["ReadNow", "ReadOutcome"]

_I = INTERVAL_SECONDS


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """How a read-now ended: ``ok`` when the meter answered; ``reason`` "read",
    "timeout", "no-response", "unknown-meter", "busy", "link-closed" or "link-stopped";
    ``interval_end`` and ``energy_wh`` of the newest record in the answer, if any."""

    meter_id: int
    ok: bool
    reason: str
    interval_end: int | None = None
    energy_wh: int | None = None


_REASONS = {
    PollStatus.NO_RESPONSE: "no-response",
    PollStatus.UNKNOWN_METER: "unknown-meter",
    PollStatus.BUSY: "busy",
}


class ReadNow:
    """Read-now requests in flight, by radio command id."""

    def __init__(self, clock: Clock, registry: MeterRegistry, outbox: Outbox,
                 delivery: Delivery, counters: LinkCounters) -> None:
        self._clock = clock
        self._registry = registry
        self._outbox = outbox
        self._delivery = delivery
        self._counters = counters
        self._pending: dict[int, tuple[int, Deferred[ReadOutcome], DelayedCall]] = {}

    def send(self, meter_id: int, module_time: int | None, timeout: float) -> Deferred[ReadOutcome]:
        """Ask ``meter_id`` for its newest completed interval (as of ``module_time``)."""
        if not self._outbox.is_open:
            return succeed(ReadOutcome(meter_id, False, "link-closed"))
        if self._registry.get(meter_id) is None:
            return succeed(ReadOutcome(meter_id, False, "unknown-meter"))
        now = module_time if module_time is not None else int(self._clock.seconds())
        end = (now // _I) * _I
        cmd_id = self._outbox.new_id()
        d: Deferred[ReadOutcome] = Deferred()
        timer = self._clock.callLater(timeout, self._timed_out, cmd_id)
        self._pending[cmd_id] = (meter_id, d, timer)
        self._counters.count_extra("read_now_sent")
        self._outbox.send(PollRequest(cmd_id, meter_id, end, 1))
        return d

    def owns(self, cmd_id: int) -> bool:
        return cmd_id in self._pending

    def on_response(self, frame: PollResponse, now: float) -> None:
        meter_id, d, timer = self._pending.pop(frame.cmd_id)
        self._outbox.release(frame.cmd_id)
        if timer.active():
            timer.cancel()
        if frame.status != PollStatus.OK:
            d.callback(ReadOutcome(meter_id, False, _REASONS.get(frame.status, "refused")))
            return
        meter = self._registry.state(frame.meter_id)
        meter.seen(now)
        newest = None
        for record in frame.records:
            self._delivery.take(meter, record)
            if newest is None or record.interval_end > newest.interval_end:
                newest = record
        self._delivery.deliver(now)
        d.callback(ReadOutcome(meter_id, True, "read",
                               newest.interval_end if newest else None,
                               newest.energy_wh if newest else None))

    def _timed_out(self, cmd_id: int) -> None:
        pending = self._pending.pop(cmd_id, None)
        if pending is None:
            return
        self._outbox.release(cmd_id)
        pending[1].callback(ReadOutcome(pending[0], False, "timeout"))

    def stop(self) -> None:
        """Every read in flight ends with reason "link-stopped"."""
        pending, self._pending = self._pending, {}
        for cmd_id, (meter_id, d, timer) in pending.items():
            self._outbox.release(cmd_id)
            if timer.active():
                timer.cancel()
            d.callback(ReadOutcome(meter_id, False, "link-stopped"))
