"""The monthly data budget: the pacing rule, the Link's uploads and heartbeats stretched on
task.Clock without losing a reading, and the 80% / 100% events from the uplink service."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Event, Journal
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.budget import MAX_STRETCH, DataBudget, month_of
from gridedge.uplink.link import Link, LinkSettings
from gridedge.uplink.service import UplinkService
from gridedge.uplink.traffic import Traffic
from gridwire import AlarmKind, IntervalRecord, Ping
from twisted.internet.task import Clock

from edge.test_uplink_link import Cloud, settings

NOV = calendar.timegm((2026, 11, 1, 0, 0, 0))
DAY = 86400.0
MB = 1_000_000


def reading(meter: int) -> IntervalRecord:
    return IntervalRecord(meter, NOV + 900, 1000 + meter, 1500, 2301, 6500, 950, 0)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.db", max_bytes=50 << 20)
    j.open()
    return j


def test_pacing_rule() -> None:
    """On pace: 1; ahead of pace by r: r squared, capped; over budget: the cap; no budget: 1."""
    b = DataBudget(30 * MB)  # November: 30 days, 1 MB a day on pace
    assert month_of(NOV + 5 * DAY) == ("2026-11", NOV, 30 * DAY)
    assert b.stretch(10 * MB, NOV + 10 * DAY) == 1.0
    assert b.stretch(20 * MB, NOV + 10 * DAY) == pytest.approx(4.0)
    assert b.stretch(int(0.9 * MB), NOV + 3600) == 1.0  # the first day counts as a whole day
    assert b.stretch(29 * MB, NOV + 10 * DAY) == MAX_STRETCH  # 2.9 squared, capped
    assert b.stretch(30 * MB, NOV + 29.9 * DAY) == MAX_STRETCH
    assert DataBudget(0).stretch(10**12, NOV) == 1.0


def test_thresholds_reported_once_a_month() -> None:
    """80% and 100% are each reported once per month, and again the next month."""
    b = DataBudget(10 * MB)
    assert b.crossed(7 * MB, NOV + DAY) == []
    assert b.crossed(8 * MB, NOV + DAY) == [0.8]
    assert b.crossed(9 * MB, NOV + 2 * DAY) == []
    assert b.crossed(11 * MB, NOV + 3 * DAY) == [1.0]
    assert b.crossed(11 * MB, NOV + 4 * DAY) == []
    december = calendar.timegm((2026, 12, 2, 0, 0, 0))
    assert b.crossed(9 * MB, december) == [0.8]


def test_stretch_delays_uploads_and_heartbeats_never_drops(journal: Journal) -> None:
    """Stretched 4x: a complete interval no longer goes at once, the deadline is 4x longer, the
    heartbeat 4x rarer; every reading still arrives."""
    clock = Clock()
    cloud = Cloud(heartbeat=10_000)
    factor = [4.0]
    link = Link(journal, settings(upload_deadline=600.0, batch_records=4000, heartbeat=1200.0),
                clock, cloud.from_edge, lambda: None, expected_meters=lambda: 3,
                stretch=lambda: factor[0])
    cloud.link = link
    link.connected()
    journal.append([reading(m) for m in range(3)])  # the interval is complete
    clock.advance(599)
    assert cloud.uploads() == []
    clock.advance(4 * 600 - 599)
    assert cloud.seqs() == [1, 2, 3]
    cloud.ack_all()
    pings = [m for m in cloud.got if isinstance(m, Ping)]
    assert pings == []
    clock.advance(4 * 1200 - 1)
    assert [m for m in cloud.got if isinstance(m, Ping)] == []
    clock.advance(1)
    assert len([m for m in cloud.got if isinstance(m, Ping)]) == 1
    factor[0] = 1.0  # back on pace: complete intervals go at once again
    journal.append([reading(m) for m in range(3, 6)])
    assert cloud.seqs() == [1, 2, 3, 4, 5, 6]
    cloud.ack_all()
    assert journal.pending == 0


def test_service_raises_events_at_80_and_100_percent(journal: Journal, tmp_path: Path) -> None:
    """The uplink service reads the month's use from the traffic counters each minute and
    journals one DATA_BUDGET event per threshold; the stretch shows in its status."""
    clock = Clock()
    clock.advance(NOV + 10 * DAY)
    traffic = Traffic(tmp_path / "t.db", clock=clock.seconds)
    config = UplinkConfig(host="127.0.0.1", port=1, server_name="cloud.test", tls_dir=tmp_path)
    service = UplinkService(
        clock, journal, traffic, host="127.0.0.1", port=1, server_name="cloud.test",
        identity_loader=lambda: None,  # type: ignore[arg-type,return-value]
        settings=LinkSettings.from_config(EdgeConfig("1.0", "A"), config),
        backoff=ReconnectPolicy(1, 2, 2, 60), connect_timeout=5, budget_bytes=10 * MB,
    )
    service._check_budget(starting=True)
    assert service.status().budget_stretch == 1.0
    traffic.count(sent=8 * MB)
    service._every_minute()
    traffic.count(received=3 * MB)
    service._every_minute()
    service._every_minute()
    events = [e for _, e in journal.read(1, 10)]
    assert [(e.kind, e.detail[:3]) for e in events if isinstance(e, Event)] == [
        (AlarmKind.DATA_BUDGET, "80%"), (AlarmKind.DATA_BUDGET, "100")]
    status = service.status()
    assert status.month_bytes == 11 * MB and status.budget_stretch == MAX_STRETCH
    assert status.budget_bytes == 10 * MB
