"""gridsim's radio module, sans-IO: reports, polls, relay commands and faults on demand."""

from __future__ import annotations

import gridradio as F
from gridradio import Flags, FrameDecoder, encode
from gridsim.model import FIRST_METER_ID, make_meters
from gridsim.module import FREEZE_AFTER_END, RadioModule

T0 = 1767571200
IV = 900
M = FIRST_METER_ID


def _module(count: int = 5, hours: int = 6) -> tuple[RadioModule, FrameDecoder]:
    module = RadioModule(make_meters(count, 1), seed=1, start=T0, end=T0 + hours * 3600)
    return module, FrameDecoder()


def _run(module: RadioModule, decoder: FrameDecoder, until: float) -> list[F.Frame]:
    return decoder.feed(module.advance(until))


def test_boot_joins_reports_and_heartbeat() -> None:
    """A module boots, announces its meters, reports each interval once per meter, and beats."""
    module, dec = _module()
    frames = []
    for step in range(1, (2 * IV + 300) // 60 + 1):
        frames += _run(module, dec, T0 + step * 60)
    kinds = [type(f) for f in frames]
    assert kinds[0] is F.ModuleReset
    assert kinds.count(F.MeterJoin) == 5 and kinds.count(F.MeshStatus) == 5
    reports = [f.record for f in frames if isinstance(f, F.IntervalReport)]
    assert sorted((r.meter_id, r.interval_end) for r in reports) == sorted(
        (M + m, T0 + k * IV) for m in range(5) for k in (1, 2)
    )
    assert kinds.count(F.ModuleStatus) >= 30


def test_poll_answers_with_memory_bounds() -> None:
    """A poll returns the meter's records in range and the bounds of its memory."""
    module, dec = _module()
    reports = [
        f.record for f in _run(module, dec, T0 + 4 * IV + 300) if isinstance(f, F.IntervalReport)
    ]
    module.receive(encode(F.PollRequest(9, M, T0 - IV, 4)))
    [resp] = [f for f in _run(module, dec, T0 + 4 * IV + 320) if isinstance(f, F.PollResponse)]
    assert resp.status == F.PollStatus.OK and resp.cmd_id == 9
    assert (resp.oldest_end, resp.newest_end) == (T0 + IV, T0 + 4 * IV)
    mine = sorted((r for r in reports if r.meter_id == M), key=lambda r: r.interval_end)
    assert list(resp.records) == mine[:2]
    module.receive(encode(F.PollRequest(10, 42, T0, 1)))
    [unknown] = [f for f in _run(module, dec, T0 + 4 * IV + 330) if isinstance(f, F.PollResponse)]
    assert unknown.status == F.PollStatus.UNKNOWN_METER


def test_relay_command_is_confirmed_and_changes_readings() -> None:
    """A relay command is confirmed, stays idempotent when repeated, and stops consumption."""
    module, dec = _module()
    _run(module, dec, T0 + IV + 300)
    for _ in range(2):
        module.receive(encode(F.RelayCommand(5, M, True)))
    confirms = [f for f in _run(module, dec, T0 + IV + 320) if isinstance(f, F.RelayConfirm)]
    assert [(c.cmd_id, c.status, c.relay) for c in confirms] == [
        (5, F.RelayStatus.OK, F.RelayState.OPEN)
    ] * 2
    later = [
        f.record
        for f in _run(module, dec, T0 + 4 * IV + 300)
        if isinstance(f, F.IntervalReport) and f.record.meter_id == M
    ]
    assert all(r.flags & Flags.RELAY_OPEN for r in later)
    assert len({r.energy_wh for r in later[1:]}) == 1


def test_faults_on_demand() -> None:
    """Reset, silence, tamper, outage, corrupt, drop and noise each do what they say."""
    module, dec = _module()
    _run(module, dec, T0 + IV + 300)
    module.reset()
    after_reset = _run(module, dec, T0 + IV + 301)
    assert (
        isinstance(after_reset[0], F.ModuleReset)
        and after_reset[0].reason == F.ResetReason.COMMANDED
    )
    module.silence(M, 3 * IV)
    module.tamper(M + 1)
    module.outage(M + 2, IV)
    module.receive(encode(F.PollRequest(3, M, T0 + IV, 1)))  # deaf for 20 s after the reset
    frames = _run(module, dec, T0 + 2 * IV + 300)
    assert any(isinstance(f, F.MeterLeave) and f.meter_id == M for f in frames)
    reports = {f.record.meter_id: f.record for f in frames if isinstance(f, F.IntervalReport)}
    assert M not in reports  # silent
    assert not any(isinstance(f, F.PollResponse) for f in frames)
    assert reports[M + 1].flags & Flags.TAMPER
    module.receive(encode(F.PollRequest(4, M, T0 + IV, 1)))
    [resp] = [f for f in _run(module, dec, T0 + 2 * IV + 320) if isinstance(f, F.PollResponse)]
    assert resp.status == F.PollStatus.NO_RESPONSE
    frames = _run(module, dec, T0 + 5 * IV + 300)
    assert any(isinstance(f, F.MeterJoin) and f.meter_id == M for f in frames)
    outage = [
        r
        for r in (f.record for f in frames if isinstance(f, F.IntervalReport))
        if r.meter_id == M + 2
    ]
    assert outage[0].flags & Flags.OUTAGE
    dropped = dec.frames_dropped
    module.corrupt_next(3)
    module.noise(50)
    _run(module, dec, T0 + 6 * IV + 300)
    assert dec.frames_dropped >= dropped + 3
    module.drop_next(2)
    before = module.counters.reports_dropped
    _run(module, dec, T0 + 7 * IV + 300)
    assert module.counters.reports_dropped == before + 2


def test_clock_stops_after_the_run_but_polls_are_answered() -> None:
    """After the last interval no records are produced, the clock freezes, polls still work."""
    module, dec = _module(hours=1)
    _run(module, dec, T0 + 10 * IV)
    assert module.complete and module.counters.records_produced == 5 * 4
    assert module.module_time == T0 + 3600 + FREEZE_AFTER_END
    module.receive(encode(F.PollRequest(1, M, T0 + 3 * IV, 2)))
    [resp] = [f for f in _run(module, dec, T0 + 11 * IV) if isinstance(f, F.PollResponse)]
    assert [r.interval_end for r in resp.records] == [T0 + 3 * IV, T0 + 4 * IV]
    assert resp.newest_end == T0 + 4 * IV


def test_relay_open_fault_opens_then_closes_the_relay() -> None:
    """relay_open_per_day: prepaid cut-offs open relays (RELAY_OPEN, no consumption) for
    1-12 h, then close them again."""
    from gridsim.module import FaultRates

    module = RadioModule(make_meters(40, 1), seed=1, start=T0, end=T0 + 30 * 3600,
                         faults=FaultRates(relay_open_per_day=1.0))
    dec = FrameDecoder()
    reports = []
    for step in range(1, 30 * 60 + 1):
        reports += [f.record for f in _run(module, dec, T0 + step * 60)
                    if isinstance(f, F.IntervalReport)]
    by_meter: dict[int, list[int]] = {}
    for r in sorted(reports, key=lambda r: r.interval_end):
        by_meter.setdefault(r.meter_id, []).append(r.flags & Flags.RELAY_OPEN)
    opened = [m for m, flags in by_meter.items() if any(flags)]
    assert len(opened) >= 20
    # open spells end: some meter reports closed again after reporting open
    assert any(0 in flags[flags.index(1):] for flags in (by_meter[m] for m in opened))
    assert all(r.current_ma == 0 for r in reports if r.flags & Flags.RELAY_OPEN)
