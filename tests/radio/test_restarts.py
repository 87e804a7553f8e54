"""The edge and gridsim each survive the other's sudden death mid-stream, losing nothing."""

from __future__ import annotations

import pytest

from support.radio_rig import (
    Rig,
    assert_exactly_once,
    sink_count,
    truth_count,
    wait_until_delivered,
)
from support.waiting import wait_until

pytestmark = pytest.mark.slow

_FAULTS = ("--corrupt-rate", "0.01", "--noise-rate", "0.002")


def test_edge_survives_gridsim_restart(rig: Rig) -> None:
    """gridsim killed with SIGKILL and resumed: the edge reopens the port and misses nothing."""
    edge = rig.edge()
    sim = rig.gridsim("--duration", "10h", *_FAULTS, meters=300, speed=2000)
    wait_until(lambda: sink_count(rig.records) > 300 * 8, 60, "some records before the restart")
    sim.kill()
    wait_until(lambda: "reopening" in edge.log_path.read_text(errors="replace"), 30,
               "the edge to see its port go away")
    rig.gridsim("--duration", "10h", *_FAULTS, meters=300, speed=2000, resume=True)
    wait_until_delivered(rig, timeout=90)
    assert_exactly_once(rig)
    stats = edge.command("stats")["stats"]
    assert edge.proc.poll() is None
    # Reports sent while the port was closed were lost: only polling can have recovered them.
    assert stats["polls_sent"] > 0


def test_gridsim_survives_edge_restart(rig: Rig) -> None:
    """The edge killed with SIGKILL and restarted: it resumes from its sink without duplicates."""
    edge = rig.edge()
    sim = rig.gridsim("--duration", "10h", *_FAULTS, meters=300, speed=2000)
    wait_until(lambda: sink_count(rig.records) > 300 * 8, 60, "some records before the restart")
    edge.kill()
    # While the edge is down every meter reports one more interval, lost: a gap to back-fill.
    produced = truth_count(rig)
    wait_until(lambda: truth_count(rig) >= produced + 300, 60, "gridsim to go on without the edge")
    edge = rig.edge()
    wait_until_delivered(rig, timeout=90)
    assert_exactly_once(rig)
    assert sim.proc.poll() is None, "gridsim died with the edge"
