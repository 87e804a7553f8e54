"""gridsim and the edge's radio link as two processes on a real pseudo-terminal."""

from __future__ import annotations

import pytest
from gridradio import Flags

from support.radio_rig import (
    Rig,
    assert_exactly_once,
    sink_count,
    sink_rows,
    wait_until_delivered,
)
from support.waiting import wait_until

pytestmark = pytest.mark.slow

FIRST = 100_001


def test_five_thousand_meters_one_day_exactly_once(rig: Rig) -> None:
    """Every record 5,000 meters produce in a day reaches the sink once despite 1% bad frames."""
    edge = rig.edge()
    sim = rig.gridsim(
        "--days",
        "1",
        "--corrupt-rate",
        "0.01",
        "--noise-rate",
        "0.002",
        "--drop-rate",
        "0.002",
        meters=5000,
        speed=2000,
    )
    total = wait_until_delivered(rig, timeout=240)
    assert total == 5000 * 96
    assert_exactly_once(rig)
    stats = edge.command("stats")["stats"]
    assert stats["dropped_crc"] > 2000, "the corrupted frames were not noticed"
    assert stats["polls_sent"] > 4000, "gaps were not filled by polling"
    assert stats["records_delivered"] == total
    assert sim.proc.poll() is None and edge.proc.poll() is None


def test_relay_round_trip_changes_later_readings(rig: Rig) -> None:
    """Opening a relay stops the meter's consumption in later records; closing it resumes it."""
    edge = rig.edge("--backfill", "0")
    rig.gridsim(meters=20, speed=900)

    def records(meter: int) -> list[tuple[int, ...]]:
        return [r for r in sink_rows(rig.records) if r[0] == meter]

    wait_until(lambda: len(records(FIRST)) >= 2, 30, "two records of the first meter")
    outcome = edge.command(f"relay open {FIRST}")["relay"]
    assert outcome["ok"] and outcome["reason"] == "confirmed" and outcome["relay_open"] is True
    assert edge.command(f"meter {FIRST}")["meter"]["relay_open"] is True

    def opened() -> list[tuple[int, ...]]:
        return [r for r in records(FIRST) if r[7] & Flags.RELAY_OPEN]

    wait_until(lambda: len(opened()) >= 3, 30, "three records with the relay open")
    fully_open = opened()[1:]
    assert {r[2] for r in fully_open} == {fully_open[0][2]}, "energy kept rising with relay open"
    assert all(r[3] == 0 and r[5] == 0 for r in fully_open), "demand or current with relay open"

    outcome = edge.command(f"relay close {FIRST}")["relay"]
    assert outcome["ok"] and outcome["relay_open"] is False
    last_open = opened()[-1][1]
    wait_until(
        lambda: len([r for r in records(FIRST) if r[1] > last_open]) >= 2,
        30,
        "two records after closing the relay",
    )
    after = [r for r in records(FIRST) if r[1] > last_open]
    assert not after[-1][7] & Flags.RELAY_OPEN
    assert after[-1][2] > fully_open[-1][2], "consumption did not resume after closing"

    unknown = edge.command("relay open 42")["relay"]
    assert not unknown["ok"] and unknown["reason"] == "unknown-meter"
    # The other meters never stopped consuming.
    other = records(FIRST + 1)
    assert other[-1][2] > other[0][2] and not other[-1][7] & Flags.RELAY_OPEN


def test_edge_keeps_running_on_pure_garbage(rig: Rig) -> None:
    """Noise bursts and corrupt frames on demand are counted; reports keep flowing after them."""
    edge = rig.edge("--backfill", "0")
    sim = rig.gridsim(meters=10, speed=900)
    wait_until(lambda: sink_count(rig.records) >= 10, 30, "first records")
    for _ in range(20):
        sim.send("noise 900")
        sim.send("corrupt 3")
    wait_until(lambda: edge.command("stats")["stats"]["frames_dropped"] >= 20, 30,
               "the corrupt frames to be counted")
    before = sink_count(rig.records)
    wait_until(lambda: sink_count(rig.records) >= before + 20, 30, "records after the garbage")
    assert edge.proc.poll() is None
