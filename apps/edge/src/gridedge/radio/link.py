"""The radio link's application logic: frames in, records to the sink, polls and commands out.

Theory of operation
-------------------
The module pushes an :class:`IntervalReport` for every meter and interval.
Some never arrive (radio loss, corrupted frames, a silent meter, a module
reset, the edge being down), so delivery is pull-backed:

1. Per meter the link keeps ``base``: the interval end up to which every record
   is in the sink or known never to exist.  It starts from the sink's
   watermarks, so a restarted edge knows what it delivered.
2. A record newer than ``base + interval`` is *held* in memory; the gap below
   it is fetched with :class:`PollRequest` (up to 16 intervals per poll) at a
   bounded rate (token bucket ``poll_rate``, at most ``max_polls_in_flight``),
   with per-meter exponential back-off while a meter does not answer.
3. Contiguous records from ``base`` on go to the sink in one ``append`` per
   batch of received bytes; only after it returns does ``base`` advance.
   Records therefore reach the sink in order per meter, exactly once: anything
   at or below ``base`` is a duplicate and is dropped.
4. A meter is *overdue* when the module's clock (from :class:`ModuleStatus`)
   is ``overdue_after`` seconds past an interval end newer than the meter's
   ``base`` and nothing newer is held: the link polls it then, which recovers
   the last report before a meter goes quiet or a simulation stops.
5. A meter heard for the first time (no watermark) is back-filled for up to
   ``backfill`` intervals before its first report; the poll response's
   ``oldest_end`` says where the meter's memory begins, so one poll settles it.

Relay commands (:meth:`RadioLink.relay`) carry an id, are re-sent with the
same id on timeout or a transient failure (at most ``relay_attempts`` sends)
and end in a :class:`RelayOutcome`; confirmations that arrive late or twice
only update the registry.

No I/O here: bytes come in through :meth:`RadioLink.data_received`, frames go
out through the ``send`` callable given to :meth:`RadioLink.connected`, and
time comes from the injected clock, so tests drive it with ``task.Clock``.

Tests: tests/radio/test_link.py (logic, task.Clock), tests/radio/test_end_to_end.py
(against gridsim over a real pseudo-terminal).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gridradio import (
    INTERVAL_SECONDS,
    MAX_POLL_COUNT,
    Flags,
    Frame,
    FrameDecoder,
    IntervalRecord,
    IntervalReport,
    MeshStatus,
    MeterJoin,
    MeterLeave,
    ModuleReset,
    ModuleStatus,
    PollRequest,
    PollResponse,
    PollStatus,
    RelayCommand,
    RelayConfirm,
    RelayState,
    RelayStatus,
    encode,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .registry import MeterRegistry, MeterState, MeterStatus
from .sink import RecordSink, SinkError

__all__ = ["Clock", "DelayedCall", "LinkSettings", "RadioLink", "RelayOutcome"]


class DelayedCall(Protocol):
    """What the link uses of twisted's DelayedCall."""

    def active(self) -> bool: ...
    def cancel(self) -> None: ...
    def getTime(self) -> float: ...


class Clock(Protocol):
    """What the link uses of IReactorTime (the reactor, or task.Clock in tests).

    A structural type rather than the zope interface, so mypy checks calls.
    """

    def seconds(self) -> float: ...
    def callLater(
        self, delay: float, callable: Callable[..., object], *args: Any, **kw: Any
    ) -> DelayedCall: ...


_I = INTERVAL_SECONDS
_RELAY_OPEN = int(Flags.RELAY_OPEN)

# Held records are kept packed (22 bytes instead of ~280 for a tuple of ints):
# energy_wh, max_demand_w, voltage_dv, current_ma, power_factor, flags.  During
# the first minutes after installation every meter holds records while its
# history is fetched, so this is most of the link's memory at its peak.
_HELD = struct.Struct(">QIHIhH")
_pack_held = _HELD.pack
_unpack_held = _HELD.unpack
_make_record = IntervalRecord._make


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Tuning of the radio link; the defaults suit a real mesh of a few thousand meters."""

    poll_rate: float = 5.0  #: polls per second, sustained (token bucket)
    poll_burst: int = 10  #: polls that may go out back to back
    max_polls_in_flight: int = 4
    poll_timeout: float = 20.0  #: seconds to wait for a poll response
    backoff_initial: float = 10.0  #: first wait before re-polling a meter that did not answer
    backoff_max: float = 900.0
    backfill: int = 96  #: intervals fetched before a newly found meter's first report
    overdue_after: int = 600  #: module-clock seconds after an interval end before polling for it
    max_held: int = 96  #: records held per meter while a gap is filled
    max_held_total: int = 50_000  #: records held for all meters together (~8 MB)
    scan_every: float = 5.0  #: seconds between scans for overdue meters
    relay_timeout: float = 30.0  #: seconds to wait for a relay confirmation
    relay_attempts: int = 3  #: sends of one relay command, first one included
    relay_retry_delay: float = 5.0  #: wait before re-sending after NO_RESPONSE or BUSY
    sink_retry: float = 1.0  #: wait before offering records again after the sink failed


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
class _PendingPoll:
    meter_id: int
    first_end: int
    count: int
    timer: DelayedCall


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


@dataclass
class LinkCounters:
    """Event counters of the link (frame-level drops are in the decoder)."""

    reports: int = 0
    duplicates: int = 0
    misaligned: int = 0
    records_delivered: int = 0
    sink_appends: int = 0
    sink_failures: int = 0
    polls_sent: int = 0
    poll_failures: int = 0
    poll_timeouts: int = 0
    late_responses: int = 0
    intervals_unavailable: int = 0
    held_discarded: int = 0
    relay_commands: int = 0
    relay_late_confirms: int = 0
    module_resets: int = 0
    joins: int = 0
    leaves: int = 0
    frames_sent: int = 0
    frames_unsent: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class RadioLink:
    """Frames from the module in, records to ``sink``, polls and relay commands out."""

    log = Logger()

    def __init__(
        self, sink: RecordSink, clock: Clock, settings: LinkSettings | None = None
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.settings = settings or LinkSettings()
        self.registry = MeterRegistry(_I)
        self.counters = LinkCounters()
        self.decoder = FrameDecoder()
        self.module_time: int | None = None
        self._send: Callable[[bytes], object] | None = None
        self._pending: dict[int, _PendingPoll | _PendingRelay] = {}
        self._polls_in_flight = 0
        self._held_total = 0
        self._next_cmd = 1
        self._queue: list[tuple[float, int]] = []
        self._tokens = float(self.settings.poll_burst)
        self._tokens_at = clock.seconds()
        self._pump_call: DelayedCall | None = None
        self._retry_call: DelayedCall | None = None
        self._sink_failing = 0  # appends failed in a row (logged at the first and the end)
        self._last_scan = float("-inf")
        # Meters with records to deliver, in arrival order (a dict is an ordered set).
        self._dirty: dict[MeterState, None] = {}
        self._stopped = False
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            IntervalReport: self._on_report,
            PollResponse: self._on_poll_response,
            RelayConfirm: self._on_relay_confirm,
            MeterJoin: self._on_join,
            MeterLeave: self._on_leave,
            MeshStatus: self._on_mesh_status,
            ModuleStatus: self._on_module_status,
            ModuleReset: self._on_module_reset,
        }

    def start(self) -> None:
        """Learn from the sink what was already delivered; call once before the port opens."""
        self._stopped = False
        for meter_id, end in self.sink.watermarks().items():
            meter = self.registry.state(meter_id)
            if meter.base is None or meter.base < end or not meter.base_confirmed:
                meter.base = end
                meter.base_confirmed = True
                self._held_total -= meter.held.discard_through(end)

    # --- the transport side ---------------------------------------------------------

    def connected(self, send: Callable[[bytes], object]) -> None:
        """The serial port is open; ``send`` writes bytes to it."""
        self._send = send
        self.decoder = _carry_counts(self.decoder)
        self._pump()

    def disconnected(self) -> None:
        """The serial port is gone: answers to what was asked will not come."""
        self._send = None
        self._requeue_polls()

    def data_received(self, data: bytes) -> None:
        """Bytes from the serial port, in any pieces."""
        now = self.clock.seconds()
        handlers = self._handlers
        for frame in self.decoder.feed(data):
            handler = handlers.get(type(frame))
            if handler is None:  # a frame only the edge sends; the module must not echo it
                self._count_extra(f"unexpected_{type(frame).__name__}")
                continue
            handler(frame, now)
        self._deliver(now)
        if now - self._last_scan >= self.settings.scan_every:
            self._scan(now)
        self._pump()

    def stop(self) -> None:
        """Cancel every timer; pending relay commands end with reason "link-stopped"."""
        self._stopped = True
        self._send = None
        self._requeue_polls()  # a later start() asks again what was in flight
        for call in (self._pump_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        for cmd_id, pending in list(self._pending.items()):
            del self._pending[cmd_id]
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            if isinstance(pending, _PendingRelay):
                self._finish_relay(pending, False, "link-stopped", None)

    # --- public queries and commands ---------------------------------------------------

    def meter(self, meter_id: int) -> MeterStatus | None:
        """A snapshot of one meter, or None if never heard of."""
        return self.registry.get(meter_id)

    def meters(self) -> list[MeterStatus]:
        """Snapshots of every known meter."""
        return self.registry.snapshot()

    def stats(self) -> dict[str, int]:
        """Every counter of the link and its frame decoder, by name."""
        c = self.counters
        out = {k: v for k, v in vars(c).items() if k != "extra"}
        out.update(c.extra)
        out["frames_ok"] = self.decoder.frames_ok
        out["bytes_received"] = self.decoder.bytes_received
        out["frames_dropped"] = self.decoder.frames_dropped
        for kind, n in self.decoder.errors.items():
            out[f"dropped_{kind}"] = n
        out["meters"] = len(self.registry)
        out["polls_queued"] = len(self._queue)
        out["polls_in_flight"] = self._polls_in_flight
        out["records_held"] = self._held_total
        return out

    def relay(
        self,
        meter_id: int,
        open: bool,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> Deferred[RelayOutcome]:
        """Open (``open=True``, supply off) or close a meter's relay.

        The Deferred always fires with a :class:`RelayOutcome`, never an error.
        """
        s = self.settings
        pending = _PendingRelay(
            cmd_id=self._new_cmd_id(),
            meter_id=meter_id,
            open=open,
            timeout=s.relay_timeout if timeout is None else timeout,
            max_attempts=max(1, s.relay_attempts if attempts is None else attempts),
            deferred=Deferred(),
        )
        self._pending[pending.cmd_id] = pending
        self.counters.relay_commands += 1
        self._relay_attempt(pending)
        return pending.deferred

    # --- frames from the module ------------------------------------------------------------

    def _on_report(self, frame: IntervalReport, now: float) -> None:
        record = frame.record
        meter = self.registry.state(record.meter_id)
        meter.seen(now)
        meter.joined = True
        meter.reports += 1
        self.counters.reports += 1
        last = meter.last_report
        if last is None or record.interval_end >= last.interval_end:
            meter.last_report = record
            meter.relay_open = bool(record.flags & _RELAY_OPEN)
        self._record(meter, record)

    def _record(self, meter: MeterState, record: IntervalRecord) -> bool:
        """Take one record of ``meter``; True if it was new."""
        end = record.interval_end
        if end % _I:
            self.counters.misaligned += 1
            return False
        base = meter.base
        if base is None:
            base = meter.base = end - (self.settings.backfill + 1) * _I
            meter.base_confirmed = self.settings.backfill == 0
        held = meter.held
        if end <= base or end in held:
            self.counters.duplicates += 1
            return False
        s = self.settings
        if held and end > held.highest() and held.span_with(end) > 2 * s.max_held:
            # Far beyond what is held: it will be polled once the gap below is filled.
            self.counters.held_discarded += 1
            return False
        held[end] = _pack_held(*record[2:])
        self._held_total += 1
        while (
            len(held) > s.max_held
            or held.span_with(end) > 2 * s.max_held
            or (self._held_total > s.max_held_total and end != base + _I)
        ):
            # The newest held record can be polled again later: nothing is lost, and
            # memory stays bounded however many meters have gaps at once.
            newest = held.highest()
            del held[newest]
            self._held_total -= 1
            self.counters.held_discarded += 1
            if newest == end:
                return False
        self._dirty[meter] = None
        return True

    def _on_poll_response(self, frame: PollResponse, now: float) -> None:
        pending = self._pending.get(frame.cmd_id)
        meter = self.registry.state(frame.meter_id)
        if (
            isinstance(pending, _PendingPoll)
            and pending.meter_id == frame.meter_id
            and pending.first_end == frame.first_end
        ):
            del self._pending[frame.cmd_id]
            pending.timer.cancel()
            self._polls_in_flight -= 1
            meter.polling = False
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
        progress = False
        for record in frame.records:
            progress = self._record(meter, record) or progress
        if meter.base is not None and (frame.oldest_end or frame.newest_end):
            progress = self._skip_unavailable(meter, frame) or progress
        if pending is not None and not meter.base_confirmed and meter.base is not None:
            meter.base_confirmed = True
            progress = True
        if progress:
            meter.backoff = 0.0
            self._dirty[meter] = None
        elif pending is not None:
            self._back_off(meter, now)

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

    def _on_relay_confirm(self, frame: RelayConfirm, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        if frame.status == RelayStatus.OK and frame.relay != RelayState.UNKNOWN:
            meter.relay_open = frame.relay == RelayState.OPEN
            meter.seen(now)
        pending = self._pending.get(frame.cmd_id)
        if not (
            isinstance(pending, _PendingRelay)
            and pending.meter_id == frame.meter_id
            and pending.open == frame.open
        ):
            self.counters.relay_late_confirms += 1
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        relay_open = None if frame.relay == RelayState.UNKNOWN else frame.relay == RelayState.OPEN
        if frame.status == RelayStatus.OK:
            self._finish_relay(pending, True, "confirmed", relay_open)
        elif (
            frame.status in (RelayStatus.NO_RESPONSE, RelayStatus.BUSY)
            and pending.attempts < pending.max_attempts
        ):
            pending.timer = self.clock.callLater(
                self.settings.relay_retry_delay, self._relay_attempt, pending
            )
        else:
            self._finish_relay(pending, False, _REASONS[frame.status], relay_open)

    def _on_join(self, frame: MeterJoin, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        meter.seen(now)
        meter.joined = True
        meter.hops, meter.rssi, meter.parent_id = frame.hops, frame.rssi, frame.parent_id
        self.counters.joins += 1

    def _on_leave(self, frame: MeterLeave, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        meter.joined = False
        self.counters.leaves += 1

    def _on_mesh_status(self, frame: MeshStatus, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        meter.hops, meter.rssi, meter.parent_id = frame.hops, frame.rssi, frame.parent_id

    def _on_module_status(self, frame: ModuleStatus, now: float) -> None:
        self.module_time = frame.module_time

    def _on_module_reset(self, frame: ModuleReset, now: float) -> None:
        self.counters.module_resets += 1
        self.module_time = frame.module_time
        self.log.warn(
            "radio module reset ({reason}, boot {boot}); re-asking what was in flight",
            reason=frame.reason.name,
            boot=frame.boot_count,
        )
        self._requeue_polls()

    # --- delivery ------------------------------------------------------------------------

    def _deliver(self, now: float) -> None:
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
                    batch.append(_make_record((meter_id, end, *_unpack_held(held[end]))))
                    end += _I
                    n += 1
                if n:
                    plan.append((meter, n))
                if len(held) > n:
                    self._want(meter, now)
            else:
                self._want(meter, now)
        if not batch:
            return
        try:
            self.sink.append(batch)
        except Exception as exc:
            self.counters.sink_failures += 1
            self._sink_failing += 1
            if not isinstance(exc, SinkError):  # a bug: its traceback, every time
                self.log.failure("record sink failed; {n} records kept for a retry", n=len(batch))
            elif self._sink_failing == 1:  # expected (disk full): once per outage
                self.log.error(
                    "record sink cannot store records, keeping them and retrying every "
                    "{retry}s: {error}", retry=self.settings.sink_retry, error=str(exc),
                )
            self._dirty.update(dirty)
            if self._retry_call is None or not self._retry_call.active():
                self._retry_call = self.clock.callLater(
                    self.settings.sink_retry, self._retry_delivery
                )
            return
        if self._sink_failing:
            self.log.info("record sink stores records again, after {n} failed appends",
                          n=self._sink_failing)
            self._sink_failing = 0
        self.counters.sink_appends += 1
        self.counters.records_delivered += len(batch)
        for meter, n in plan:
            base = meter.base
            assert base is not None
            base += n * _I
            meter.held.discard_through(base)
            meter.base = base
            self._held_total -= n

    def _retry_delivery(self) -> None:
        self._deliver(self.clock.seconds())
        self._pump()

    # --- gap filling -----------------------------------------------------------------------

    def _gap(self, meter: MeterState) -> tuple[int, int] | None:
        """(first interval end, count) of the next poll ``meter`` needs, or None."""
        if meter.base is None:
            return None
        low = meter.base + _I
        if meter.held:
            high = meter.held.lowest() - _I
        elif meter.joined and self.module_time is not None and meter.base_confirmed:
            high = (self.module_time - self.settings.overdue_after) // _I * _I
        else:
            return None
        if high < low:
            return None
        return low, min(MAX_POLL_COUNT, (high - low) // _I + 1)

    def _want(self, meter: MeterState, at: float) -> None:
        if meter.queued or meter.polling:
            return
        meter.queued = True
        heapq.heappush(self._queue, (at, meter.meter_id))

    def _back_off(self, meter: MeterState, now: float) -> None:
        s = self.settings
        meter.backoff = min(s.backoff_max, max(s.backoff_initial, meter.backoff * 2))
        self._want(meter, now + meter.backoff)

    def _scan(self, now: float) -> None:
        """Queue a poll for every overdue meter."""
        self._last_scan = now
        if self.module_time is None:
            return
        for meter in self.registry.states():
            if not (meter.queued or meter.polling) and self._gap(meter) is not None:
                self._want(meter, now)

    def _pump(self) -> None:
        """Send the polls that are due, within the rate and in-flight limits."""
        if self._send is None or self._stopped:
            return
        s = self.settings
        now = self.clock.seconds()
        self._tokens = min(
            float(s.poll_burst), self._tokens + (now - self._tokens_at) * s.poll_rate
        )
        self._tokens_at = now
        queue = self._queue
        wake: float | None = None
        while queue and self._polls_in_flight < s.max_polls_in_flight:
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
            gap = self._gap(meter)
            if gap is None or meter.polling:
                continue
            self._tokens -= 1.0
            self._send_poll(meter, *gap)
        if wake is not None:
            self._wake_at(wake)

    def _wake_at(self, when: float) -> None:
        # At least a millisecond: at Unix-time magnitudes a smaller step can round to
        # "now" and spin.
        delay = max(0.001, when - self.clock.seconds())
        call = self._pump_call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._pump_call = self.clock.callLater(delay, self._pump)

    def _send_poll(self, meter: MeterState, first_end: int, count: int) -> None:
        cmd_id = self._new_cmd_id()
        timer = self.clock.callLater(self.settings.poll_timeout, self._poll_timed_out, cmd_id)
        self._pending[cmd_id] = _PendingPoll(meter.meter_id, first_end, count, timer)
        self._polls_in_flight += 1
        meter.polling = True
        self.counters.polls_sent += 1
        self._send_frame(PollRequest(cmd_id, meter.meter_id, first_end, count))

    def _poll_timed_out(self, cmd_id: int) -> None:
        pending = self._pending.pop(cmd_id, None)
        if not isinstance(pending, _PendingPoll):
            return
        self._polls_in_flight -= 1
        self.counters.poll_timeouts += 1
        meter = self.registry.state(pending.meter_id)
        meter.polling = False
        self._back_off(meter, self.clock.seconds())
        self._pump()

    def _requeue_polls(self) -> None:
        now = self.clock.seconds()
        for cmd_id, pending in list(self._pending.items()):
            if isinstance(pending, _PendingPoll):
                del self._pending[cmd_id]
                pending.timer.cancel()
                self._polls_in_flight -= 1
                meter = self.registry.state(pending.meter_id)
                meter.polling = False
                self._want(meter, now)
        self._pump()

    # --- relay commands ----------------------------------------------------------------------

    def _relay_attempt(self, pending: _PendingRelay) -> None:
        pending.attempts += 1
        pending.timer = self.clock.callLater(pending.timeout, self._relay_timed_out, pending)
        self._send_frame(RelayCommand(pending.cmd_id, pending.meter_id, pending.open))

    def _relay_timed_out(self, pending: _PendingRelay) -> None:
        if self._pending.get(pending.cmd_id) is not pending:
            return
        if pending.attempts < pending.max_attempts:
            self._relay_attempt(pending)
        else:
            self._finish_relay(pending, False, "timeout", None)

    def _finish_relay(
        self, pending: _PendingRelay, ok: bool, reason: str, relay_open: bool | None
    ) -> None:
        self._pending.pop(pending.cmd_id, None)
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

    # --- helpers -----------------------------------------------------------------------------

    def _new_cmd_id(self) -> int:
        while True:
            cmd_id = self._next_cmd
            self._next_cmd = cmd_id % 0xFFFF + 1
            if cmd_id not in self._pending:
                return cmd_id

    def _send_frame(self, frame: Frame) -> None:
        if self._send is None:
            self.counters.frames_unsent += 1
            return
        self.counters.frames_sent += 1
        self._send(encode(frame))

    def _count_extra(self, name: str) -> None:
        extra = self.counters.extra
        extra[name] = extra.get(name, 0) + 1


def _carry_counts(old: FrameDecoder) -> FrameDecoder:
    """A fresh decoder (no half frame from the old connection) keeping the old counters."""
    new = FrameDecoder()
    new.bytes_received = old.bytes_received
    new.frames_ok = old.frames_ok
    new.errors = old.errors
    return new
