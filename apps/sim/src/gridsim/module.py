"""The simulated radio module: meters' reports out, polls and relay commands in, with faults.

Sans-IO like the edge's link: :meth:`RadioModule.receive` takes bytes the edge
wrote, :meth:`RadioModule.advance` moves the simulated clock and returns the
bytes the module sends.  The command-line program (gridsim.cli) only moves
bytes between this object and a pseudo-terminal and calls ``advance`` from a
timer.

What the module does, in simulated time:

* at every interval end the meters record the interval (the record goes to
  the ground truth first, then into the meter's memory); each meter reports
  it ``report_offset`` seconds later (5-295 s, fixed per meter);
* a ``ModuleStatus`` heartbeat every 60 s carries the module clock;
* polls and relay commands are answered after a mesh round trip of
  0.8 s + 0.6 s per hop (and jitter); a silent meter yields NO_RESPONSE after
  8 s; more than 64 requests waiting yields BUSY at once;
* after the run's last interval (``end``) the meters record nothing more and
  the module clock stops at ``end + 600`` (the edge's default overdue delay),
  while polls are still answered, so the edge can fetch the last stragglers.

Faults (rates in :class:`FaultRates`; the ``*_next``/``silence``/... methods
inject them on demand): corrupted frames (one bit flipped), noise bursts,
dropped reports, meters going silent (a MeterLeave, then NO_RESPONSE to
everything, then a MeterJoin when back), tamper and outage flags, module
resets (a ModuleReset notice, requests in flight forgotten, 20 s deaf).
Decisions about reports come from the interval's seeded generator and are
deterministic; those about answers come from a second generator and depend
on what the edge asks and when.

Tests: tests/sim/test_module.py.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from gridradio import (
    INTERVAL_SECONDS,
    MAX_POLL_COUNT,
    Frame,
    FrameDecoder,
    IntervalRecord,
    IntervalReport,
    LeaveReason,
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
    ResetReason,
    encode,
)

from .model import Meter, produce_interval
from .truth import TruthWriter

__all__ = ["FIRMWARE_VERSION", "FaultRates", "RadioModule"]

_I = INTERVAL_SECONDS
FIRMWARE_VERSION = 0x0103
_STATUS_EVERY = 60
_SILENT_TIMEOUT = 8.0
_QUEUE_LIMIT = 256
_DEAF_AFTER_RESET = 20.0
#: The module clock stops this long after the run's last interval end.
FREEZE_AFTER_END = 600

# A record in a meter's memory, without its meter id (the frames' record layout).
_PACKED = struct.Struct(">IIIHIhH")

_OK, _DROP, _CORRUPT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class FaultRates:
    """How often things go wrong.  Per-frame rates are probabilities; per-day are expectations."""

    corrupt: float = 0.0  #: probability a frame is sent with one bit flipped
    noise: float = 0.0  #: probability a burst of 1-64 random bytes comes before a frame
    drop: float = 0.0  #: probability a report is lost in the mesh
    silence_per_day: float = 0.0  #: times per meter per day it goes silent (30 min - 4 h)
    tamper_per_day: float = 0.0  #: tamper events per meter per day
    outage_per_day: float = 0.0  #: supply outages per meter per day (15 min - 3 h)
    reset_per_day: float = 0.0  #: module resets per day
    #: prepaid credit running out per meter per day: the relay opens for 1 - 12 h
    relay_open_per_day: float = 0.0


@dataclass
class ModuleCounters:
    frames_sent: int = 0
    reports_sent: int = 0
    reports_dropped: int = 0
    reports_deaf: int = 0
    frames_corrupted: int = 0
    noise_bursts: int = 0
    records_produced: int = 0
    polls_answered: int = 0
    relay_commands: int = 0
    relay_frames: int = 0  #: RelayCommand frames read from the port, answered or not
    busy: int = 0
    resets: int = 0
    frames_received: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    end: int
    pos: int
    fate: bytearray


class RadioModule:
    """The module and its meters from simulated time ``start`` to ``end``."""

    def __init__(
        self,
        meters: list[Meter],
        *,
        seed: int,
        start: int,
        end: int,
        truth: TruthWriter | None = None,
        faults: FaultRates | None = None,
        tz_offset_h: float = 3.0,
        memory_intervals: int = 192,
        resumed_memory: dict[int, list[IntervalRecord]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.meters = meters
        self.by_id = {m.params.meter_id: m for m in meters}
        self.seed = seed
        self.start = start - start % _I
        self.end = end - end % _I
        self.truth = truth
        self.faults = faults or FaultRates()
        self.tz_offset_h = tz_offset_h
        self.memory_intervals = max(MAX_POLL_COUNT, memory_intervals)
        self.counters = ModuleCounters()
        self.log = log or (lambda message: None)
        self.now = float(self.start)
        self.boot_count = 0
        self._decoder = FrameDecoder()
        self._rng = random.Random(f"{seed}:answers")
        self._order = sorted(range(len(meters)), key=lambda i: meters[i].params.report_offset)
        self._offsets = [meters[i].params.report_offset for i in self._order]
        self._batches: list[_Batch] = []
        self._queue: list[tuple[float, int, Frame]] = []
        self._queue_seq = 0
        self._silent: set[int] = set()
        self._last_status = float("-inf")
        self._deaf_until = float("-inf")
        self._reset_at: float | None = None
        self._corrupt_next = 0
        self._drop_next = 0
        self._noise_next: list[int] = []
        self._out: list[bytes] = []
        self._started = False
        self.complete = False
        # Each meter's memory: packed records, oldest first, and the oldest one's end.
        self._memory: dict[int, bytearray] = {m.params.meter_id: bytearray() for m in meters}
        self._oldest: dict[int, int] = {}
        self.next_end = self.start + _I
        if resumed_memory:
            for meter_id, records in resumed_memory.items():
                if meter_id in self._memory and records:
                    self._remember(records)
                    self.next_end = max(self.next_end, records[-1].interval_end + _I)
            self.now = float(self.next_end - _I + 1)
        self.complete = self.next_end > self.end

    # --- the byte interface ---------------------------------------------------------------

    @property
    def module_time(self) -> int:
        """The clock the module tells the edge (stops after the run)."""
        return int(min(self.now, self.end + FREEZE_AFTER_END))

    def receive(self, data: bytes) -> None:
        """Bytes the edge sent."""
        for frame in self._decoder.feed(data):
            self.counters.frames_received += 1
            if self.now < self._deaf_until:
                continue
            if isinstance(frame, RelayCommand):
                self.counters.relay_frames += 1
            if isinstance(frame, PollRequest | RelayCommand):
                self._request(frame)
            else:
                self._count(f"unexpected_{type(frame).__name__}")

    def advance(self, now: float) -> bytes:
        """Run the simulation up to ``now`` (Unix seconds); the bytes sent meanwhile."""
        if not self._started:
            self._started = True
            self._boot(ResetReason.POWER_ON)
        now = max(now, self.now)
        while self.next_end <= now and self.next_end <= self.end:
            self._run_until(float(self.next_end))
            self._produce(self.next_end)
            self.next_end += _I
        self._run_until(now)
        out = b"".join(self._out)
        self._out.clear()
        return out

    # --- faults on demand --------------------------------------------------------------------

    def reset(self, reason: ResetReason = ResetReason.COMMANDED) -> None:
        """Restart the module now: a reset notice, requests in flight lost, deaf for 20 s."""
        self._boot(reason)

    def silence(self, meter_id: int, seconds: float) -> None:
        """Make a meter silent for ``seconds`` of simulated time."""
        meter = self.by_id[meter_id]
        self._go_silent(meter, int(self.now + seconds))

    def tamper(self, meter_id: int) -> None:
        """Flag tamper on the meter's next interval."""
        self.by_id[meter_id].tamper_pending = True

    def outage(self, meter_id: int, seconds: float) -> None:
        """Cut the meter's supply for ``seconds`` from the next interval start."""
        meter = self.by_id[meter_id]
        meter.outage_until = max(meter.outage_until, self.next_end + int(seconds))

    def corrupt_next(self, frames: int) -> None:
        self._corrupt_next += frames

    def drop_next(self, reports: int) -> None:
        self._drop_next += reports

    def noise(self, size: int) -> None:
        """Send ``size`` random bytes before the next frame."""
        self._noise_next.append(size)

    # --- internals ----------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters.extra[name] = self.counters.extra.get(name, 0) + 1

    def _send(self, frame: Frame) -> None:
        data = encode(frame)
        rng = self._rng
        f = self.faults
        if self._noise_next or (f.noise and rng.random() < f.noise):
            size = self._noise_next.pop(0) if self._noise_next else rng.randint(1, 64)
            data = rng.randbytes(size) + data
            self.counters.noise_bursts += 1
        if self._corrupt_next or (f.corrupt and rng.random() < f.corrupt):
            if self._corrupt_next:
                self._corrupt_next -= 1
            data = _flip_bit(data, rng)
            self.counters.frames_corrupted += 1
        self.counters.frames_sent += 1
        self._out.append(data)

    def _boot(self, reason: ResetReason) -> None:
        self.boot_count += 1
        self.counters.resets += 1
        self._queue.clear()
        self._deaf_until = self.now + _DEAF_AFTER_RESET
        self._send(ModuleReset(self.module_time, reason, self.boot_count))
        if reason == ResetReason.POWER_ON:
            for meter in self.meters:
                p = meter.params
                self._send(MeterJoin(p.meter_id, p.parent_id, p.hops, p.rssi))
                self._send(MeshStatus(p.meter_id, p.parent_id, p.hops, p.rssi))
        else:
            self.log(f"module reset ({reason.name.lower()}), boot {self.boot_count}")

    def _run_until(self, now: float) -> None:
        """Everything due up to ``now`` except interval production."""
        if self._reset_at is not None and self._reset_at <= now:
            self.now = self._reset_at
            self._reset_at = None
            self._boot(ResetReason.WATCHDOG)
        self.now = now
        self._emit_reports(now)
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, request = heapq.heappop(queue)
            self._answer(request)
        if self._silent:
            for meter_id in [m for m in self._silent if self.by_id[m].silent_until <= now]:
                self._silent.discard(meter_id)
                p = self.by_id[meter_id].params
                self._send(MeterJoin(p.meter_id, p.parent_id, p.hops, p.rssi))
        if now - self._last_status >= _STATUS_EVERY and self.now >= self.start:
            self._last_status = now - now % _STATUS_EVERY
            self._send(
                ModuleStatus(
                    self.module_time,
                    int(self.now - self.start),
                    len(self.meters) - len(self._silent),
                    len(self._queue),
                    FIRMWARE_VERSION,
                )
            )

    def _emit_reports(self, now: float) -> None:
        offsets = self._offsets
        order = self._order
        meters = self.meters
        deaf = now < self._deaf_until
        for batch in self._batches:
            limit = now - batch.end
            pos = batch.pos
            fate = batch.fate
            while pos < len(offsets) and offsets[pos] <= limit:
                index = order[pos]
                pos += 1
                meter = meters[index]
                if meter.silent_until > batch.end + offsets[pos - 1]:
                    continue
                if deaf:
                    self.counters.reports_deaf += 1
                    continue
                if fate[index] == _DROP or self._drop_next:
                    if fate[index] != _DROP:
                        self._drop_next -= 1
                    self.counters.reports_dropped += 1
                    continue
                record = self._recall(meter.params.meter_id, batch.end)
                if record is None:  # pragma: no cover - memory holds every recent interval
                    continue
                if fate[index] == _CORRUPT:
                    self._corrupt_next += 1
                self._send_report(record)
            batch.pos = pos
        self._batches = [b for b in self._batches if b.pos < len(offsets)]

    def _send_report(self, record: IntervalRecord) -> None:
        self.counters.reports_sent += 1
        self._send(IntervalReport(record))

    def _produce(self, end: int) -> None:
        records, rng = produce_interval(self.meters, end, self.seed, self.tz_offset_h)
        complete = end >= self.end
        if self.truth is not None:
            self.truth.append(records, end, complete=complete)
        self._remember(records)
        self.counters.records_produced += len(records)
        f = self.faults
        fate = bytearray(len(self.meters))
        per_interval = _I / 86400
        rand = rng.random
        for index, meter in enumerate(self.meters):
            if f.drop and rand() < f.drop:
                fate[index] = _DROP
            elif f.corrupt and rand() < f.corrupt:
                fate[index] = _CORRUPT
            if (
                f.silence_per_day
                and meter.silent_until <= end
                and rand() < f.silence_per_day * per_interval
            ):
                self._go_silent(meter, end + rng.randint(1800, 4 * 3600))
            if f.tamper_per_day and rand() < f.tamper_per_day * per_interval:
                meter.tamper_pending = True
            if (
                f.outage_per_day
                and meter.outage_until <= end
                and rand() < f.outage_per_day * per_interval
            ):
                meter.outage_until = end + rng.randint(900, 3 * 3600)
            if meter.relay_until and meter.relay_until <= end:
                meter.relay_open = False
                meter.relay_changed_at = meter.relay_until
                meter.relay_until = 0
            elif (
                f.relay_open_per_day
                and not meter.relay_open
                and rand() < f.relay_open_per_day * per_interval
            ):
                meter.relay_open = True
                meter.relay_changed_at = end + rng.randrange(0, _I)
                meter.relay_until = end + rng.randint(3600, 12 * 3600)
        if f.reset_per_day and rand() < f.reset_per_day * per_interval:
            self._reset_at = end + rng.uniform(0, _I)
        self._batches.append(_Batch(end, 0, fate))
        if complete:
            self.complete = True
            self.log(f"last interval ({end}) recorded: {self.counters.records_produced} records")

    def _go_silent(self, meter: Meter, until: int) -> None:
        meter.silent_until = max(meter.silent_until, until)
        self._silent.add(meter.params.meter_id)
        self._send(MeterLeave(meter.params.meter_id, LeaveReason.LOST))

    def _remember(self, records: list[IntervalRecord]) -> None:
        memory = self._memory
        oldest = self._oldest
        pack = _PACKED.pack
        cap = self.memory_intervals * _PACKED.size
        for r in records:
            buf = memory[r.meter_id]
            if not buf:
                oldest[r.meter_id] = r.interval_end
            buf += pack(*r[1:])
            if len(buf) > cap:
                del buf[: _PACKED.size]
                oldest[r.meter_id] += _I

    def _recall(self, meter_id: int, end: int) -> IntervalRecord | None:
        buf = self._memory[meter_id]
        if not buf:
            return None
        index = (end - self._oldest[meter_id]) // _I
        if index < 0 or (index + 1) * _PACKED.size > len(buf):
            return None
        return IntervalRecord._make((meter_id, *_PACKED.unpack_from(buf, index * _PACKED.size)))

    def _request(self, frame: PollRequest | RelayCommand) -> None:
        meter = self.by_id.get(frame.meter_id)
        if meter is None:
            self._reply_failure(frame, 2)  # UNKNOWN_METER in both enums
            return
        if len(self._queue) >= _QUEUE_LIMIT:
            self.counters.busy += 1
            self._reply_failure(frame, 3)  # BUSY in both enums
            return
        delay = 0.8 + 0.6 * meter.params.hops + self._rng.uniform(0, 0.5)
        if meter.silent_until > self.now:
            delay = _SILENT_TIMEOUT
        self._queue_seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._queue_seq, frame))

    def _reply_failure(self, frame: PollRequest | RelayCommand, status: int) -> None:
        if isinstance(frame, PollRequest):
            self._send(
                PollResponse(
                    frame.cmd_id,
                    frame.meter_id,
                    frame.first_end,
                    frame.count,
                    PollStatus(status),
                    0,
                    0,
                    (),
                )
            )
        else:
            meter = self.by_id.get(frame.meter_id)
            relay = RelayState.UNKNOWN if meter is None else RelayState(int(meter.relay_open))
            self._send(
                RelayConfirm(frame.cmd_id, frame.meter_id, frame.open, RelayStatus(status), relay)
            )

    def _answer(self, frame: Frame) -> None:
        assert isinstance(frame, PollRequest | RelayCommand)
        meter = self.by_id[frame.meter_id]
        if meter.silent_until > self.now:
            self._reply_failure(frame, 1)  # NO_RESPONSE in both enums
            return
        if isinstance(frame, RelayCommand):
            self.counters.relay_commands += 1
            if meter.relay_open != frame.open:
                meter.relay_open = frame.open
                meter.relay_changed_at = int(self.now)
                self.log(
                    f"meter {frame.meter_id}: relay {'opened' if frame.open else 'closed'}"
                    f" (command {frame.cmd_id})"
                )
            self._send(
                RelayConfirm(
                    frame.cmd_id,
                    frame.meter_id,
                    frame.open,
                    RelayStatus.OK,
                    RelayState(int(meter.relay_open)),
                )
            )
            return
        self.counters.polls_answered += 1
        records = []
        for k in range(frame.count):
            record = self._recall(frame.meter_id, frame.first_end + k * _I)
            if record is not None:
                records.append(record)
        buf = self._memory[frame.meter_id]
        oldest = self._oldest.get(frame.meter_id, 0) if buf else 0
        newest = oldest + (len(buf) // _PACKED.size - 1) * _I if buf else 0
        self._send(
            PollResponse(
                frame.cmd_id,
                frame.meter_id,
                frame.first_end,
                frame.count,
                PollStatus.OK,
                oldest,
                newest,
                tuple(records),
            )
        )


def _flip_bit(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one bit flipped somewhere between its first and last byte."""
    if len(data) < 3:
        return data
    at = rng.randrange(1, len(data) - 1)
    out = bytearray(data)
    out[at] ^= 1 << rng.randrange(8)
    return bytes(out)
