"""RadioLink logic on task.Clock and in-memory bytes: gap filling, delivery, relay commands,
the memory bound, reopening the port and the backlog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gridradio as F
import pytest
from gridedge.radio import (
    LinkSettings,
    MemorySink,
    RadioLink,
    RelayOutcome,
    SinkError,
)
from gridedge.radio.held import SLOT_SIZE, HeldRecords, pack, unpack
from gridedge.radio.readnow import ReadOutcome
from gridradio import Flags, FrameDecoder, IntervalRecord, encode_many
from gridsim.model import make_meters
from gridsim.module import FaultRates, RadioModule
from gridsim.truth import GroundTruth, TruthWriter
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

T0 = 1767571200  # 2026-01-05 00:00 UTC
IV = 900
M = 100001


def rec(meter: int, end: int, energy: int | None = None, flags: int = 0) -> IntervalRecord:
    return IntervalRecord(
        meter, end, energy if energy is not None else end // 100, 500, 2300, 2000, 950, flags
    )


class FailingSink(MemorySink):
    """A MemorySink whose append raises ``error`` while it is set."""

    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error

    def append(self, records: Sequence[IntervalRecord]) -> None:
        if self.error is not None:
            raise self.error
        super().append(records)


class Harness:
    def __init__(self, sink: MemorySink | None = None, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.sink = sink or MemorySink()
        base = {"backfill": 0, "poll_rate": 100.0, "poll_burst": 10, "poll_timeout": 5.0}
        base.update(settings)
        self.link = RadioLink(self.sink, self.clock, LinkSettings(**base))  # type: ignore[arg-type]
        self.link.start()
        self.sent: list[F.Frame] = []
        self._decoder = FrameDecoder()
        self.reconnect()

    def reconnect(self) -> None:
        """The serial port opens (again)."""
        self.link.connected(lambda data: self.sent.extend(self._decoder.feed(data)))

    def feed(self, *frames: F.Frame) -> None:
        self.link.data_received(encode_many(frames))

    def report(self, *records: IntervalRecord) -> None:
        self.feed(*(F.IntervalReport(r) for r in records))

    def polls(self) -> list[F.PollRequest]:
        out = [f for f in self.sent if isinstance(f, F.PollRequest)]
        self.sent = [f for f in self.sent if not isinstance(f, F.PollRequest)]
        return out

    def answer(self, poll: F.PollRequest, have: dict[int, IntervalRecord], oldest: int) -> None:
        records = tuple(
            have[e]
            for e in range(poll.first_end, poll.first_end + poll.count * IV, IV)
            if e in have
        )
        newest = max(have) if have else 0
        self.feed(
            F.PollResponse(
                poll.cmd_id,
                poll.meter_id,
                poll.first_end,
                poll.count,
                F.PollStatus.OK,
                oldest,
                newest,
                records,
            )
        )

    def delivered(self) -> list[tuple[int, int]]:
        return [(r.meter_id, r.interval_end) for r in self.sink.records]


def test_contiguous_reports_go_straight_to_the_sink() -> None:
    """Reports without gaps are appended at once, in order, without any poll."""
    h = Harness()
    h.report(rec(M, T0 + IV), rec(M, T0 + 2 * IV), rec(M + 1, T0 + IV))
    assert h.delivered() == [(M, T0 + IV), (M, T0 + 2 * IV), (M + 1, T0 + IV)]
    assert h.sink.appends == 1
    assert h.polls() == []


def test_gap_is_polled_and_filled_in_order_exactly_once() -> None:
    """A missing interval is polled; the records behind it wait and then follow it in order."""
    h = Harness()
    have = {T0 + k * IV: rec(M, T0 + k * IV) for k in range(1, 6)}
    h.report(have[T0 + IV])
    h.report(have[T0 + 4 * IV], have[T0 + 5 * IV])  # 2 and 3 lost
    assert h.delivered() == [(M, T0 + IV)]
    assert h.link.meter(M).missing == 2  # type: ignore[union-attr]
    [poll] = h.polls()
    assert (poll.meter_id, poll.first_end, poll.count) == (M, T0 + 2 * IV, 2)
    h.answer(poll, have, oldest=T0 + IV)
    assert h.delivered() == [(M, T0 + k * IV) for k in range(1, 6)]
    h.report(have[T0 + 3 * IV])  # a late duplicate
    assert len(h.sink.records) == 5
    assert h.link.stats()["duplicates"] == 1


def test_restart_resumes_from_the_sink_watermarks() -> None:
    """A new link over a sink that holds records neither repeats nor skips any."""
    sink = MemorySink()
    sink.append([rec(M, T0 + IV), rec(M, T0 + 2 * IV)])
    h = Harness(sink)
    h.report(rec(M, T0 + 2 * IV), rec(M, T0 + 3 * IV))
    assert h.delivered() == [(M, T0 + IV), (M, T0 + 2 * IV), (M, T0 + 3 * IV)]
    assert h.polls() == []
    h.report(rec(M, T0 + 5 * IV))
    [poll] = h.polls()
    assert (poll.first_end, poll.count) == (T0 + 4 * IV, 1)


def test_new_meter_is_backfilled_with_one_poll() -> None:
    """A meter heard for the first time is asked for its history; oldest_end bounds it."""
    h = Harness(backfill=96)
    have = {T0 + k * IV: rec(M, T0 + k * IV) for k in range(1, 4)}
    h.report(have[T0 + 3 * IV])
    assert h.delivered() == []
    [poll] = h.polls()
    assert poll.first_end == T0 + 3 * IV - 96 * IV and poll.count == 16
    h.answer(poll, have, oldest=T0 + IV)  # nothing in that range: memory starts at T0+IV
    [poll] = h.polls()
    assert (poll.first_end, poll.count) == (T0 + IV, 2)
    h.answer(poll, have, oldest=T0 + IV)
    assert h.delivered() == [(M, T0 + k * IV) for k in range(1, 4)]
    assert h.link.stats()["intervals_unavailable"] == 0


def test_overdue_meter_is_polled_by_module_time() -> None:
    """When the module clock passes an interval end by overdue_after, a missing report is polled."""
    h = Harness(overdue_after=600, scan_every=0.0)
    h.report(rec(M, T0 + IV))
    h.feed(F.ModuleStatus(T0 + 2 * IV + 599, 0, 1, 0, 1))
    assert h.polls() == []
    h.feed(F.ModuleStatus(T0 + 2 * IV + 600, 0, 1, 0, 1))
    [poll] = h.polls()
    assert (poll.first_end, poll.count) == (T0 + 2 * IV, 1)
    h.answer(poll, {T0 + 2 * IV: rec(M, T0 + 2 * IV)}, oldest=T0 + IV)
    assert h.delivered() == [(M, T0 + IV), (M, T0 + 2 * IV)]


def test_unanswered_poll_backs_off_and_retries() -> None:
    """A poll without an answer times out, and the meter is asked again after a back-off."""
    h = Harness(poll_timeout=5.0, backoff_initial=10.0)
    h.report(rec(M, T0 + IV), rec(M, T0 + 3 * IV))
    first = h.polls()
    assert len(first) == 1
    h.clock.advance(5.0)
    assert h.link.stats()["poll_timeouts"] == 1
    h.clock.advance(9.9)
    assert h.polls() == []
    h.clock.advance(0.2)
    [again] = h.polls()
    assert again.first_end == first[0].first_end and again.cmd_id != first[0].cmd_id
    h.feed(  # the first, late answer still counts
        F.PollResponse(
            first[0].cmd_id,
            M,
            T0 + 2 * IV,
            1,
            F.PollStatus.OK,
            T0 + IV,
            T0 + 3 * IV,
            (rec(M, T0 + 2 * IV),),
        )
    )
    assert h.delivered() == [(M, T0 + IV), (M, T0 + 2 * IV), (M, T0 + 3 * IV)]
    assert h.link.stats()["late_responses"] == 1


def test_poll_rate_and_in_flight_are_bounded() -> None:
    """With 200 meters needing polls, the rate and in-flight limits hold."""
    h = Harness(poll_rate=5.0, poll_burst=10, max_polls_in_flight=1000)
    for m in range(200):
        h.report(rec(M + m, T0 + IV), rec(M + m, T0 + 3 * IV))
    assert len(h.polls()) == 10  # the burst
    for _ in range(100):
        h.clock.advance(0.1)
    assert 49 <= len(h.polls()) <= 50  # then 5 per second
    h2 = Harness(poll_rate=1000.0, poll_burst=1000, max_polls_in_flight=4)
    for m in range(50):
        h2.report(rec(M + m, T0 + IV), rec(M + m, T0 + 3 * IV))
    assert len(h2.polls()) == 4


def test_sink_failure_keeps_records_and_retries() -> None:
    """When append raises, nothing is lost and nothing is appended twice."""
    sink = FailingSink(OSError("disk full"))
    h = Harness(sink, sink_retry=1.0)
    h.report(rec(M, T0 + IV), rec(M, T0 + 2 * IV))
    assert h.delivered() == [] and h.link.stats()["sink_failures"] == 1
    sink.error = None
    h.clock.advance(1.0)
    h.report(rec(M, T0 + 2 * IV))
    assert h.delivered() == [(M, T0 + IV), (M, T0 + 2 * IV)]


def test_expected_sink_outage_is_logged_once_each_way_without_traceback() -> None:
    """A SinkError (disk full) logs one line when appends start failing and one on recovery."""
    sink = FailingSink(SinkError("journal: disk full"))
    h = Harness(sink, sink_retry=1.0)
    with capturedLogs() as events:
        for k in range(1, 6):
            h.report(rec(M, T0 + k * IV))
            h.clock.advance(1.0)
        sink.error = None
        h.clock.advance(1.0)
    texts = [formatEvent(e) for e in events]
    assert h.link.stats()["sink_failures"] >= 5
    assert not any("log_failure" in e for e in events), texts
    failing = [t for t in texts if "disk full" in t]
    assert len(failing) == 1 and "retrying every 1.0s" in failing[0], texts
    recovered = [t for t in texts if "stores records again" in t]
    assert recovered == [f"record sink stores records again, after "
                         f"{h.link.stats()['sink_failures']} failed appends"], texts
    assert h.delivered() == [(M, T0 + k * IV) for k in range(1, 6)]


def test_unexpected_sink_error_keeps_its_traceback() -> None:
    """Any other exception from append is a bug: it is logged with its traceback."""
    h = Harness(FailingSink(ValueError("bug")), sink_retry=1.0)
    with capturedLogs() as events:
        h.report(rec(M, T0 + IV))
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [ValueError]


def test_held_records_are_bounded() -> None:
    """A meter that never fills its gap holds at most max_held records; the rest is re-polled."""
    h = Harness(max_held=8)
    h.report(rec(M, T0 + IV))
    h.report(*(rec(M, T0 + k * IV) for k in range(3, 40)))
    assert h.link.stats()["records_held"] == 8
    assert h.link.stats()["held_discarded"] == 29


def test_relay_confirmed() -> None:
    """A confirmed relay command fires its Deferred with ok and updates the registry."""
    h = Harness()
    outcomes: list[RelayOutcome] = []
    h.link.relay(M, True).addCallback(outcomes.append)
    [cmd] = [f for f in h.sent if isinstance(f, F.RelayCommand)]
    assert cmd.meter_id == M and cmd.open
    confirm = F.RelayConfirm(cmd.cmd_id, M, True, F.RelayStatus.OK, F.RelayState.OPEN)
    h.feed(confirm)
    assert outcomes == [RelayOutcome(M, True, True, "confirmed", True, 1)]
    assert h.link.meter(M).relay_open is True  # type: ignore[union-attr]
    h.feed(confirm)  # duplicate: harmless
    assert len(outcomes) == 1 and h.link.stats()["relay_late_confirms"] == 1


def test_relay_timeout_retries_with_the_same_id_then_fails() -> None:
    """Without confirmation the command is re-sent (same id) and finally fails with "timeout"."""
    h = Harness(relay_timeout=10.0, relay_attempts=3)
    outcomes: list[RelayOutcome] = []
    h.link.relay(M, True).addCallback(outcomes.append)
    for _ in range(3):
        h.clock.advance(10.0)
    cmds = [f for f in h.sent if isinstance(f, F.RelayCommand)]
    assert len(cmds) == 3 and len({c.cmd_id for c in cmds}) == 1
    assert outcomes == [RelayOutcome(M, True, False, "timeout", None, 3)]
    # A confirmation after the failure is only recorded in the registry.
    h.feed(F.RelayConfirm(cmds[0].cmd_id, M, True, F.RelayStatus.OK, F.RelayState.OPEN))
    assert len(outcomes) == 1
    assert h.link.meter(M).relay_open is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("status", "reason", "sends"),
    [
        (F.RelayStatus.REFUSED, "refused", 1),
        (F.RelayStatus.UNKNOWN_METER, "unknown-meter", 1),
        (F.RelayStatus.NO_RESPONSE, "no-response", 2),
    ],
)
def test_relay_failures(status: F.RelayStatus, reason: str, sends: int) -> None:
    """Definite failures end at once; transient ones are retried up to the attempt limit."""
    h = Harness(relay_attempts=2, relay_retry_delay=1.0)
    outcomes: list[RelayOutcome] = []
    h.link.relay(M, False).addCallback(outcomes.append)
    for _ in range(sends):
        cmd = [f for f in h.sent if isinstance(f, F.RelayCommand)][-1]
        h.feed(F.RelayConfirm(cmd.cmd_id, M, False, status, F.RelayState.UNKNOWN))
        h.clock.advance(1.0)
    assert [(o.ok, o.reason, o.attempts) for o in outcomes] == [(False, reason, sends)]


def test_stop_fails_pending_relays() -> None:
    """Stopping the link ends pending commands with "link-stopped" and cancels every timer."""
    h = Harness()
    outcomes: list[RelayOutcome] = []
    h.link.relay(M, True).addCallback(outcomes.append)
    h.report(rec(M, T0 + IV), rec(M, T0 + 3 * IV))
    h.link.stop()
    assert outcomes[0].reason == "link-stopped"
    assert h.clock.getDelayedCalls() == []


def test_module_reset_reasks_in_flight_polls() -> None:
    """After a module reset notice, polls in flight are sent again without waiting for timeouts."""
    h = Harness(poll_timeout=60.0)
    h.report(rec(M, T0 + IV), rec(M, T0 + 3 * IV))
    [first] = h.polls()
    h.feed(F.ModuleReset(T0, F.ResetReason.WATCHDOG, 2))
    [again] = h.polls()
    assert again.first_end == first.first_end
    assert h.link.stats()["module_resets"] == 1


def test_whole_day_against_simulated_module_with_every_fault(tmp_path: Path) -> None:
    """Sans-IO link against gridsim's module, all fault kinds on: the sink equals the truth."""
    meters = make_meters(300, seed=7)
    truth_path = tmp_path / "truth.sqlite"
    truth = TruthWriter(truth_path, resume=False)
    module = RadioModule(
        meters,
        seed=7,
        start=T0,
        end=T0 + 86400,
        truth=truth,
        faults=FaultRates(
            corrupt=0.02,
            noise=0.01,
            drop=0.02,
            silence_per_day=0.5,
            tamper_per_day=0.2,
            outage_per_day=0.2,
            reset_per_day=3,
        ),
    )
    clock = Clock()
    clock.advance(T0)
    sink = MemorySink()
    link = RadioLink(
        sink,
        clock,
        LinkSettings(
            poll_rate=200,
            poll_burst=20,
            max_polls_in_flight=16,
            poll_timeout=0.5,
            backoff_initial=0.2,
            backoff_max=2.0,
            scan_every=0.1,
        ),
    )
    link.start()
    link.connected(module.receive)
    for _ in range(int(40 / 0.02)):  # 40 s at 3,000x: the day plus time to catch up
        clock.advance(0.02)
        data = module.advance(T0 + (clock.seconds() - T0) * 3000)
        if data:
            link.data_received(data)
    truth.close()
    with GroundTruth(truth_path) as gt:
        expected = {(r.meter_id, r.interval_end): r for r in gt.records()}
        assert gt.is_complete()
    got = [(r.meter_id, r.interval_end) for r in sink.records]
    assert len(got) == len(set(got)), "a record was delivered twice"
    assert set(got) == set(expected)
    assert all(r == expected[(r.meter_id, r.interval_end)] for r in sink.records)
    c = module.counters
    assert c.resets > 1 and c.frames_corrupted > 0 and c.reports_dropped > 0
    flags = {r.flags for r in sink.records}
    assert any(f & Flags.TAMPER for f in flags) and any(f & Flags.OUTAGE for f in flags)
    assert link.stats()["leaves"] > 0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=80))
def test_held_slots_behave_like_a_dict(ops: list[tuple[bool, int]]) -> None:
    """HeldRecords agrees with a plain dict under any mix of puts, deletes and discards."""
    held, model = HeldRecords(), {}
    for put, k in ops:
        end = T0 + k * IV
        if put:
            value = k.to_bytes(22, "big")
            held[end] = value
            model[end] = value
        elif end in model:
            del held[end]
            del model[end]
        else:
            assert held.discard_through(end) == sum(1 for e in model if e <= end)
            model = {e: v for e, v in model.items() if e > end}
        assert len(held) == len(model)
        assert all(e in held and held[e] == v for e, v in model.items())
        if model:
            assert (held.lowest(), held.highest()) == (min(model), max(model))


def test_held_slots_far_ahead_are_not_held() -> None:
    """A record far beyond the held window is refused (and re-polled later), bounding memory."""
    h = Harness(max_held=8)
    h.report(rec(M, T0 + IV), rec(M, T0 + 3 * IV), rec(M, T0 + 1000 * IV))
    assert h.link.stats()["records_held"] == 1
    assert h.link.stats()["held_discarded"] == 1


def test_held_format_round_trips() -> None:
    """A record packed into a held slot comes back equal, and a slot is SLOT_SIZE bytes."""
    record = IntervalRecord(M, T0 + IV, 2**63, 2**32 - 1, 65535, 2**32 - 1, -1000, 0xFFFF)
    slot = pack(record)
    assert len(slot) == SLOT_SIZE
    assert unpack(M, T0 + IV, slot) == record


def test_poll_window_limits_the_intervals_of_one_poll() -> None:
    """poll_window caps how many intervals one poll asks for."""
    h = Harness(poll_window=4)
    h.report(rec(M, T0 + IV), rec(M, T0 + 20 * IV))
    [poll] = h.polls()
    assert (poll.first_end, poll.count) == (T0 + 2 * IV, 4)


def test_reopened_port_polls_a_meter_in_back_off_at_once() -> None:
    """Waits earned while the module did not answer end when the port reopens."""
    h = Harness(poll_timeout=5.0, backoff_initial=10.0, backoff_max=900.0, scan_every=0.0)
    h.report(rec(M, T0 + IV))
    h.feed(F.ModuleStatus(T0 + 3 * IV + 600, 0, 1, 0, 1))
    assert len(h.polls()) == 1
    for _ in range(300):  # no answers: 10, 20, 40, 80, 160 s of back-off
        h.clock.advance(1.0)
    assert 3 <= len(h.polls()) <= 6
    h.link.disconnected()
    h.clock.advance(1.0)
    h.reconnect()
    [poll] = h.polls()
    assert (poll.meter_id, poll.first_end) == (M, T0 + 2 * IV)


def test_reopened_port_scans_at_the_first_module_clock() -> None:
    """After a reopen, a meter overdue by the module's next status is polled at once, not
    after scan_every (nor after overdue_after)."""
    sink = MemorySink()
    sink.append([rec(M, T0 + IV)])
    h = Harness(sink, scan_every=60.0, overdue_after=600)
    h.feed(F.ModuleStatus(T0 + IV + 100, 0, 1, 0, 1))
    assert h.polls() == []
    h.link.disconnected()
    h.clock.advance(1.0)
    h.reconnect()
    assert h.polls() == []
    h.feed(F.ModuleStatus(T0 + 3 * IV + 600, 0, 1, 0, 1))  # the meters stopped meanwhile
    [poll] = h.polls()
    assert (poll.first_end, poll.count) == (T0 + 2 * IV, 2)
    h.answer(poll, {T0 + k * IV: rec(M, T0 + k * IV) for k in (2, 3)}, oldest=T0)
    assert h.delivered() == [(M, T0 + k * IV) for k in (1, 2, 3)]


def test_no_polls_while_the_sink_refuses_records() -> None:
    """While appends fail, polls wait (their answers could not be stored); then they go."""
    sink = FailingSink(SinkError("journal: disk full"))
    h = Harness(sink, sink_retry=1.0)
    h.report(rec(M, T0 + IV), rec(M, T0 + 3 * IV))
    h.clock.advance(5.0)
    assert h.polls() == [] and h.delivered() == []
    sink.error = None
    h.clock.advance(1.0)
    assert h.delivered() == [(M, T0 + IV)]
    [poll] = h.polls()
    assert (poll.first_end, poll.count) == (T0 + 2 * IV, 1)


def test_records_continuing_the_run_are_kept_at_the_memory_bound() -> None:
    """At max_held_total, a poll answer's records that follow the delivered run are all
    delivered, not let go (the oldest are the ones a meter forgets first)."""
    h = Harness(max_held_total=3)
    a, b = M, M + 1
    h.report(rec(a, T0 + IV), rec(b, T0 + IV))
    h.report(rec(a, T0 + 3 * IV), rec(a, T0 + 4 * IV), rec(b, T0 + 5 * IV))
    assert h.link.stats()["records_held"] == 3
    polls = {p.meter_id: p for p in h.polls()}
    discarded = h.link.stats()["held_discarded"]
    have = {T0 + k * IV: rec(b, T0 + k * IV) for k in range(1, 6)}
    h.answer(polls[b], have, oldest=T0 + IV)
    assert [e for m, e in h.delivered() if m == b] == [T0 + k * IV for k in range(1, 6)]
    assert h.link.stats()["held_discarded"] == discarded


def test_memory_bound_loses_nothing() -> None:
    """Many meters with gaps and a small bound: what is let go is polled again later, and
    every record reaches the sink once, in order."""
    h = Harness(max_held_total=10, scan_every=0.0, overdue_after=600)
    meters = range(M, M + 8)
    have = {m: {T0 + k * IV: rec(m, T0 + k * IV) for k in range(1, 9)} for m in meters}
    h.report(*(have[m][T0 + IV] for m in meters))
    for k in range(3, 9):  # interval 2 lost for every meter
        h.report(*(have[m][T0 + k * IV] for m in meters))
        assert h.link.stats()["records_held"] <= 10
    assert h.link.stats()["held_discarded"] > 0
    h.feed(F.ModuleStatus(T0 + 8 * IV + 600, 0, 8, 0, 1))
    for _ in range(100):  # answer every poll; the overdue scan finds what was let go
        polls = h.polls()
        for poll in polls:
            h.answer(poll, have[poll.meter_id], oldest=T0 + IV)
        if not polls:
            h.clock.advance(1.0)
            h.feed(F.ModuleStatus(T0 + 8 * IV + 600, 0, 8, 0, 1))
    got = h.delivered()
    assert len(got) == len(set(got)) == 8 * 8
    for m in meters:
        assert [e for mm, e in got if mm == m] == [T0 + k * IV for k in range(1, 9)]


def test_backlog_in_stats_and_logged_on_change() -> None:
    """The backlog (meters and intervals owed, the oldest) is in stats(); the log gets a line
    when it appears, one per backlog_log_every while it lasts and one when it clears."""
    h = Harness(scan_every=0.0, backlog_log_every=300.0, poll_timeout=1000.0)
    with capturedLogs() as events:
        h.report(rec(M, T0 + IV), rec(M, T0 + 5 * IV))
        stats = h.link.stats()
        assert (stats["meters_owed"], stats["intervals_owed"], stats["oldest_owed"]) == (
            1, 3, T0 + 2 * IV)
        for _ in range(5):
            h.clock.advance(10.0)
            h.feed(F.ModuleStatus(T0 + 5 * IV, 0, 1, 0, 1))
        h.clock.advance(300.0)
        h.feed(F.ModuleStatus(T0 + 5 * IV, 0, 1, 0, 1))
        [poll] = h.polls()
        h.answer(poll, {T0 + k * IV: rec(M, T0 + k * IV) for k in range(1, 6)}, oldest=T0)
        h.feed(F.ModuleStatus(T0 + 5 * IV, 0, 1, 0, 1))
    texts = [formatEvent(e) for e in events if "backlog" in formatEvent(e)]
    assert len(texts) == 3, texts
    assert texts[0].split(";")[0] == texts[1].split(";")[0]
    assert texts[0].startswith("radio backlog: 1 meters owe 3 intervals, the oldest ending "
                               "2026-01-05 00:30:00Z"), texts
    assert texts[2].startswith("radio backlog cleared after 35"), texts
    assert h.link.stats()["meters_owed"] == 0 and h.link.stats()["oldest_owed"] == 0


def test_read_now_asks_for_the_newest_interval_and_delivers_it() -> None:
    """read_now polls the meter's newest completed interval (by the module clock), delivers
    the record to the sink like any other, and fires with what was read."""
    h = Harness()
    h.report(rec(M, T0))
    h.feed(F.ModuleStatus(T0 + 2 * IV + 30, 1, 1, 0, 1))
    h.polls()  # whatever gap filling wanted: not this test's business
    outcomes: list[ReadOutcome] = []
    h.link.read_now(M).addCallback(outcomes.append)
    [poll] = [p for p in h.polls() if (p.first_end, p.count) == (T0 + 2 * IV, 1)]
    assert poll.meter_id == M
    h.answer(poll, {T0 + 2 * IV: rec(M, T0 + 2 * IV, 4242)}, T0)
    assert outcomes == [ReadOutcome(M, True, "read", T0 + 2 * IV, 4242)]
    assert h.link.stats()["records_held"] + len(h.delivered()) >= 2  # T0 and the new one
    assert h.link.stats()["late_responses"] == 0


def test_read_now_failures() -> None:
    """An unknown meter, a meter that does not answer, no answer at all, a stopped link: the
    Deferred fires with the reason, never an error."""
    h = Harness()
    got: list[ReadOutcome] = []
    h.link.read_now(999).addCallback(got.append)
    h.report(rec(M, T0))
    h.link.read_now(M, timeout=3.0).addCallback(got.append)
    poll = h.polls()[-1]
    h.feed(F.PollResponse(poll.cmd_id, M, poll.first_end, 1, F.PollStatus.NO_RESPONSE, 0, 0, ()))
    h.link.read_now(M, timeout=3.0).addCallback(got.append)
    h.clock.advance(3.0)
    h.link.read_now(M).addCallback(got.append)
    h.link.stop()
    assert [o.reason for o in got] == ["unknown-meter", "no-response", "timeout", "link-stopped"]


def test_meter_changes_without_a_record_reach_the_watcher() -> None:
    """A join, a mesh status, a leave and a relay confirmation each tell ``on_meter_change``
    which meter changed (the local page shows them at once); a report does not (its record
    reaches the page through the sink)."""
    h = Harness()
    changed: list[int] = []
    h.link.on_meter_change = changed.append
    h.feed(F.MeterJoin(M, 0, 1, -60), F.MeshStatus(M, 7, 2, -72),
           F.MeterLeave(M, F.LeaveReason.LOST))
    h.report(rec(M, 900 * 2000))
    h.link.relay(M, True)
    [cmd] = [f for f in h.sent if isinstance(f, F.RelayCommand)]
    h.feed(F.RelayConfirm(cmd.cmd_id, M, True, F.RelayStatus.OK, F.RelayState.OPEN))
    assert changed == [M, M, M, M]
    status = h.link.meter(M)
    assert status is not None and (status.hops, status.rssi, status.parent_id) == (2, -72, 7)
