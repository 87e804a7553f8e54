"""Records in, records to the sink: what is held while a gap is filled, and the appends.

Why apart: this is the exactly-once half of the link (docs/radio.md,
"Delivery"), and the memory bound.  The poll scheduler decides what to ask
for; this part decides what to keep and when a record is delivered.

* Per meter, ``base`` is the interval end up to which every record is in the
  sink or known never to exist.  A record at or below it is a duplicate.
* A newer record is *held* (packed, see held.py) until every interval below it
  is held too; then the run from ``base`` goes to the sink, all meters' runs in
  one ``append``, and only after ``append`` returns does ``base`` advance.
* Memory is bounded per meter (``max_held``) and in all (``max_held_total``).
  At a bound the newest held records of the meter are let go: the meter still
  has them and they are polled again once the gap below is filled.  A record
  that continues the run from ``base`` is never let go (it leaves memory with
  the next append, and the oldest records are the ones a meter forgets first).
* When ``append`` fails the records stay held and are offered again every
  ``sink_retry`` seconds; an expected failure (:class:`SinkError`, e.g. a full
  disk) is logged once when it starts and once when it ends.  While appends
  fail, :attr:`Delivery.failing` tells the poll scheduler to stop asking for
  records that could not be delivered either.

Tests: tests/radio/test_link.py (delivery, sink failures, held bounds).
"""

from __future__ import annotations

from collections.abc import Callable

from gridradio import INTERVAL_SECONDS, IntervalRecord
from twisted.logger import Logger

from . import held as packed
from .clock import Clock, DelayedCall
from .counters import LinkCounters
from .registry import MeterState
from .settings import LinkSettings
from .sink import RecordSink, SinkError

__all__ = ["Delivery"]

_I = INTERVAL_SECONDS


class Delivery:
    """Held records of every meter and their way into the sink."""

    log = Logger()

    def __init__(
        self,
        sink: RecordSink,
        clock: Clock,
        settings: LinkSettings,
        counters: LinkCounters,
        *,
        want_poll: Callable[[MeterState, float], None],
        retried: Callable[[], None],
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.settings = settings
        self.counters = counters
        self._want_poll = want_poll  # a meter still has a gap after its run went out
        self._retried = retried  # called after a retry of a failed append
        self.held_total = 0  #: records held for all meters
        # Meters with records to deliver, in arrival order (a dict is an ordered set).
        self._dirty: dict[MeterState, None] = {}
        self._failing = 0  # appends failed in a row (logged at the first and the end)
        self._retry_call: DelayedCall | None = None

    @property
    def failing(self) -> bool:
        """True while the sink refuses records (between a failed and a good append)."""
        return self._failing > 0

    def confirm(self, meter: MeterState, base: int) -> None:
        """The sink already has everything of ``meter`` up to ``base`` (its watermark)."""
        if meter.base is None or meter.base < base or not meter.base_confirmed:
            meter.base = base
            meter.base_confirmed = True
            self.held_total -= meter.held.discard_through(base)

    def take(self, meter: MeterState, record: IntervalRecord) -> bool:
        """Hold one record of ``meter`` for delivery; True if it was new."""
        end = record.interval_end
        if end % _I:
            self.counters.misaligned += 1
            return False
        s = self.settings
        base = meter.base
        if base is None:  # heard for the first time: its history is back-filled
            base = meter.base = end - (s.backfill + 1) * _I
            meter.base_confirmed = s.backfill == 0
        held = meter.held
        if end <= base or end in held:
            self.counters.duplicates += 1
            return False
        if held and end > held.highest() and held.span_with(end) > 2 * s.max_held:
            # Far beyond what is held: it will be polled once the gap below is filled.
            self.counters.held_discarded += 1
            return False
        deliverable = end == held.run_end(base) + _I
        held[end] = packed.pack(record)
        self.held_total += 1
        while (
            len(held) > s.max_held
            or held.span_with(end) > 2 * s.max_held
            or (self.held_total > s.max_held_total and not deliverable)
        ):
            # The newest held record can be polled again later: nothing is lost, and
            # memory stays bounded however many meters have gaps at once.
            newest = held.highest()
            del held[newest]
            self.held_total -= 1
            self.counters.held_discarded += 1
            if newest == end:
                return False
        self._dirty[meter] = None
        return True

    def touch(self, meter: MeterState) -> None:
        """``meter``'s base moved or was confirmed: look at it in the next delivery."""
        self._dirty[meter] = None

    def deliver(self, now: float) -> None:
        """Append every contiguous run of held records in one sink call."""
        if not self._dirty:
            return
        batch: list[IntervalRecord] = []
        plan: list[tuple[MeterState, int]] = []
        dirty = self._dirty
        self._dirty = {}
        for meter in dirty:
            if meter.base is None:
                continue
            if meter.base_confirmed:
                held = meter.held
                end = meter.base + _I
                n = 0
                meter_id = meter.meter_id
                while end in held:
                    batch.append(packed.unpack(meter_id, end, held[end]))
                    end += _I
                    n += 1
                if n:
                    plan.append((meter, n))
                if len(held) > n:
                    self._want_poll(meter, now)
            else:
                self._want_poll(meter, now)
        if not batch:
            return
        try:
            self.sink.append(batch)
        except Exception as exc:
            self._append_failed(exc, len(batch), dirty)
            return
        if self._failing:
            self.log.info("record sink stores records again, after {n} failed appends",
                          n=self._failing)
            self._failing = 0
        self.counters.sink_appends += 1
        self.counters.records_delivered += len(batch)
        for meter, n in plan:
            base = meter.base
            assert base is not None
            base += n * _I
            meter.held.discard_through(base)
            meter.base = base
            self.held_total -= n

    def stop(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()

    def _append_failed(self, exc: Exception, n: int, dirty: dict[MeterState, None]) -> None:
        self.counters.sink_failures += 1
        self._failing += 1
        if not isinstance(exc, SinkError):  # a bug: its traceback, every time
            self.log.failure("record sink failed; {n} records kept for a retry", n=n)
        elif self._failing == 1:  # expected (disk full): once per outage
            self.log.error(
                "record sink cannot store records, keeping them and retrying every "
                "{retry}s: {error}", retry=self.settings.sink_retry, error=str(exc),
            )
        self._dirty.update(dirty)
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self.clock.callLater(self.settings.sink_retry, self._retry)

    def _retry(self) -> None:
        self.deliver(self.clock.seconds())
        self._retried()
