"""Gap filling: which meters owe records, and the polls that fetch them, at a bounded rate.

Why apart: this is the pull half of delivery (docs/radio.md, "Delivery"),
the part whose tuning decides how fast a unit catches up after an outage.

* A meter's *gap* starts right after its ``base``.  It ends below its lowest
  held record, or, with nothing held, at the newest interval that is
  *overdue*: the module's clock (MODULE_STATUS) is ``overdue_after`` seconds
  past its end.  That recovers the last report before a meter goes quiet.
* Meters with a gap wait in a queue ordered by when they may be polled; a
  poll asks for up to ``poll_window`` intervals from the start of the gap.
  Polls go out through a token bucket (``poll_rate``, ``poll_burst``), at
  most ``max_polls_in_flight`` at once, one per meter.
* A meter that does not answer waits ``backoff_initial`` doubling up to
  ``backoff_max`` before it is asked again; progress resets the wait.
* Every ``scan_every`` seconds (as frames arrive) all meters are scanned:
  overdue ones are queued and the :class:`~gridedge.radio.backlog.Backlog`
  is measured.
* When the port (re)opens, what is owed is asked for at once: waits earned
  while the port or the module was gone are forgotten, and meters are
  scanned with the last module clock known and again at the first one the
  module sends after the open.
* While the sink refuses records (``Delivery.failing``) no poll goes out:
  its answer could not be delivered either.

Tests: tests/radio/test_link.py (gaps, polls, back-off, reopen, backlog).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from gridradio import INTERVAL_SECONDS, PollRequest, PollResponse, PollStatus

from .backlog import Backlog, BacklogLog
from .clock import Clock, DelayedCall
from .counters import LinkCounters
from .delivery import Delivery
from .outbox import Outbox
from .registry import MeterRegistry, MeterState
from .settings import LinkSettings

__all__ = ["PollScheduler"]

_I = INTERVAL_SECONDS


@dataclass(slots=True)
class _PendingPoll:
    meter_id: int
    first_end: int
    count: int
    timer: DelayedCall


class PollScheduler:
    """The queue of meters owing records and the polls in flight."""

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
        self.delivery: Delivery | None = None  # set by the link; polls pause while it fails
        self.module_time: int | None = None  #: the module's clock, from its last status
        self.backlog = Backlog()  #: as measured at the last scan
        self._backlog_log = BacklogLog(settings.backlog_log_every)
        self._pending: dict[int, _PendingPoll] = {}
        self._queue: list[tuple[float, int]] = []
        self._tokens = float(settings.poll_burst)
        self._tokens_at = clock.seconds()
        self._pump_call: DelayedCall | None = None
        self._last_scan = float("-inf")
        self._scan_at_module_clock = False
        self._stopped = False

    @property
    def queued(self) -> int:
        """Meters waiting for a poll."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Polls sent and not yet answered or timed out."""
        return len(self._pending)

    # --- events from the link -------------------------------------------------------------

    def start(self) -> None:
        self._stopped = False

    def opened(self) -> None:
        """The port is (re)open: ask for what is owed now, not after waits earned meanwhile."""
        now = self.clock.seconds()
        for meter in self.registry.states():
            meter.backoff = 0.0
        self._queue = [(min(at, now), meter_id) for at, meter_id in self._queue]
        heapq.heapify(self._queue)
        # The module clock known from before is a lower bound of the module's: what was
        # overdue by it is overdue now.  The first one after the open may say more.
        self._scan_at_module_clock = True
        self.scan(now)
        self.pump()

    def closed(self) -> None:
        """The port is gone: answers to polls in flight will not come; ask again later."""
        self.requeue()

    def module_clock(self, module_time: int, now: float) -> None:
        """The module said what time it is (MODULE_STATUS or MODULE_RESET)."""
        self.module_time = module_time
        if self._scan_at_module_clock:
            self._scan_at_module_clock = False
            self.scan(now)

    def tick(self, now: float) -> None:
        """Frames arrived: scan for overdue meters if it is time, send what is due."""
        if now - self._last_scan >= self.settings.scan_every:
            self.scan(now)
        self.pump()

    def want(self, meter: MeterState, at: float) -> None:
        """Queue ``meter`` for a poll at ``at`` (unless it is queued or polled already)."""
        if meter.queued or meter.polling:
            return
        meter.queued = True
        heapq.heappush(self._queue, (at, meter.meter_id))

    def requeue(self) -> None:
        """Forget the polls in flight and queue their meters again (module reset, port lost)."""
        now = self.clock.seconds()
        for cmd_id, pending in list(self._pending.items()):
            self._release(cmd_id, pending)
            self.want(self.registry.state(pending.meter_id), now)
        self.pump()

    def stop(self) -> None:
        self._stopped = True
        self.requeue()  # a later start() asks again what was in flight
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()

    def on_response(self, frame: PollResponse, now: float) -> None:
        pending = self._pending.get(frame.cmd_id)
        meter = self.registry.state(frame.meter_id)
        if (
            pending is not None
            and pending.meter_id == frame.meter_id
            and pending.first_end == frame.first_end
        ):
            self._release(frame.cmd_id, pending)
        else:
            self.counters.late_responses += 1
            pending = None
        if frame.status != PollStatus.OK:
            self.counters.poll_failures += 1
            if pending is not None:
                self._back_off(meter, now)
            return
        meter.seen(now)
        meter.joined = True
        delivery = self.delivery
        assert delivery is not None
        progress = False
        for record in frame.records:
            progress = delivery.take(meter, record) or progress
        if meter.base is not None and (frame.oldest_end or frame.newest_end):
            progress = self._skip_unavailable(meter, frame) or progress
        if pending is not None and not meter.base_confirmed and meter.base is not None:
            meter.base_confirmed = True
            progress = True
        if progress:
            meter.backoff = 0.0
            delivery.touch(meter)
        elif pending is not None:
            self._back_off(meter, now)

    # --- decisions ------------------------------------------------------------------------

    def gap(self, meter: MeterState) -> tuple[int, int] | None:
        """(first interval end, count) of the next poll ``meter`` needs, or None."""
        if meter.base is None:
            return None
        low = meter.base + _I
        if meter.held:
            high = meter.held.lowest() - _I
        elif meter.joined and self.module_time is not None and meter.base_confirmed:
            high = self._overdue_through(self.module_time)
        else:
            return None
        if high < low:
            return None
        return low, min(self.settings.poll_window, (high - low) // _I + 1)

    def _overdue_through(self, module_time: int) -> int:
        """The newest interval end that is overdue at ``module_time``."""
        return (module_time - self.settings.overdue_after) // _I * _I

    def scan(self, now: float) -> None:
        """Queue a poll for every overdue meter, and measure the backlog."""
        self._last_scan = now
        overdue = None if self.module_time is None else self._overdue_through(self.module_time)
        meters = intervals = 0
        oldest: int | None = None
        for meter in self.registry.states():
            base = meter.base
            if base is None:
                continue
            held = meter.held
            if held:
                owed = (held.highest() - base) // _I - len(held)
            elif overdue is not None and meter.joined and meter.base_confirmed:
                owed = (overdue - base) // _I
            else:
                owed = 0
            if owed <= 0:
                continue
            meters += 1
            intervals += owed
            if oldest is None or base < oldest:
                oldest = base
            if not (meter.queued or meter.polling) and self.gap(meter) is not None:
                self.want(meter, now)
        self.backlog = Backlog(meters, intervals, None if oldest is None else oldest + _I)
        held_total = self.delivery.held_total if self.delivery is not None else 0
        self._backlog_log.update(self.backlog, held_total, len(self._queue), now)

    def pump(self) -> None:
        """Send the polls that are due, within the rate and in-flight limits."""
        if not self.outbox.is_open or self._stopped:
            return
        if self.delivery is not None and self.delivery.failing:
            return  # resumed by the delivery retry that succeeds
        s = self.settings
        now = self.clock.seconds()
        self._tokens = min(
            float(s.poll_burst), self._tokens + (now - self._tokens_at) * s.poll_rate
        )
        self._tokens_at = now
        queue = self._queue
        wake: float | None = None
        while queue and len(self._pending) < s.max_polls_in_flight:
            at, meter_id = queue[0]
            if at > now:
                wake = at
                break
            if self._tokens < 1.0:
                wake = now + (1.0 - self._tokens) / s.poll_rate
                break
            heapq.heappop(queue)
            meter = self.registry.state(meter_id)
            meter.queued = False
            gap = self.gap(meter)
            if gap is None or meter.polling:
                continue
            self._tokens -= 1.0
            self._send_poll(meter, *gap)
        if wake is not None:
            self._wake_at(wake)

    # --- internals ------------------------------------------------------------------------

    def _skip_unavailable(self, meter: MeterState, frame: PollResponse) -> bool:
        """Move ``base`` over intervals the meter says it does not and will not hold."""
        assert meter.base is not None
        present = {r.interval_end for r in frame.records}
        last = frame.first_end + (frame.count - 1) * _I
        held = meter.held
        base = meter.base
        while True:
            nxt = base + _I
            if nxt in held:
                break
            if nxt < frame.oldest_end or (
                frame.first_end <= nxt <= min(last, frame.newest_end) and nxt not in present
            ):
                base = nxt
                continue
            break
        if base == meter.base:
            return False
        if meter.base_confirmed:
            self.counters.intervals_unavailable += (base - meter.base) // _I
        meter.base = base
        return True

    def _back_off(self, meter: MeterState, now: float) -> None:
        s = self.settings
        meter.backoff = min(s.backoff_max, max(s.backoff_initial, meter.backoff * 2))
        self.want(meter, now + meter.backoff)

    def _wake_at(self, when: float) -> None:
        # At least a millisecond: at Unix-time magnitudes a smaller step can round to
        # "now" and spin.
        delay = max(0.001, when - self.clock.seconds())
        call = self._pump_call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._pump_call = self.clock.callLater(delay, self.pump)

    def _send_poll(self, meter: MeterState, first_end: int, count: int) -> None:
        cmd_id = self.outbox.new_id()
        timer = self.clock.callLater(self.settings.poll_timeout, self._timed_out, cmd_id)
        self._pending[cmd_id] = _PendingPoll(meter.meter_id, first_end, count, timer)
        meter.polling = True
        self.counters.polls_sent += 1
        self.outbox.send(PollRequest(cmd_id, meter.meter_id, first_end, count))

    def _timed_out(self, cmd_id: int) -> None:
        pending = self._pending.get(cmd_id)
        if pending is None:
            return
        self._release(cmd_id, pending)
        self.counters.poll_timeouts += 1
        self._back_off(self.registry.state(pending.meter_id), self.clock.seconds())
        self.pump()

    def _release(self, cmd_id: int, pending: _PendingPoll) -> None:
        del self._pending[cmd_id]
        self.outbox.release(cmd_id)
        if pending.timer.active():
            pending.timer.cancel()
        self.registry.state(pending.meter_id).polling = False
