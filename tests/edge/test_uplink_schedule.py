"""The metered-link upload schedule on task.Clock, through the real Link and gridwire's real
CloudSession: one upload when an interval's expected readings are in, the deadline as the
bound on waiting, events without waiting, a backlog at Welcome at once, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridedge.journal import Event, Journal
from gridedge.uplink.schedule import UploadSchedule
from gridwire import Ack, EventReport, IntervalRecord, ReadingBatch
from twisted.internet.task import Clock

from edge.test_uplink_link import Cloud, connect

END = 1_700_000_100


def reading(meter: int, end: int = END) -> IntervalRecord:
    return IntervalRecord(meter, end, 1000 + meter, 1500, 2301, 6500, 950, 0)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.db", max_bytes=50 << 20)
    j.open()
    return j


def metered(journal: Journal, cloud: Cloud, clock: Clock, expected: int = 0,
            deadline: float = 600.0) -> None:
    link = connect(journal, cloud, clock, upload_deadline=deadline, batch_records=4000)
    link.schedule.expected = lambda: expected


def test_interval_complete_uploads_once(journal: Journal) -> None:
    """With 5 meters expected, readings wait until the fifth is in; then one batch carries all."""
    clock = Clock()
    cloud = Cloud()
    metered(journal, cloud, clock, expected=5)
    for meter in range(4):
        clock.advance(30)
        journal.append([reading(meter)])
    assert cloud.uploads() == []
    journal.append([reading(4)])
    (batch,) = cloud.uploads()
    assert isinstance(batch, ReadingBatch) and batch.first_seq == 1 and batch.last_seq == 5


def test_deadline_bounds_the_wait_when_a_meter_is_missing(journal: Journal) -> None:
    """A missing meter does not hold the others: the upload goes deadline seconds after the
    oldest waiting reading arrived, and a straggler waits for the next one."""
    clock = Clock()
    cloud = Cloud()
    metered(journal, cloud, clock, expected=5, deadline=600)
    clock.advance(10)
    journal.append([reading(0)])
    clock.advance(100)
    journal.append([reading(1), reading(2)])
    clock.advance(499)
    assert cloud.uploads() == []
    clock.advance(1)
    assert cloud.seqs() == [1, 2, 3]
    cloud.ack_all()
    journal.append([reading(3)])
    clock.advance(599)
    assert cloud.seqs() == [1, 2, 3]
    clock.advance(1)
    assert cloud.seqs() == [1, 2, 3, 4]
    cloud.ack_all()
    assert journal.pending == 0


def test_event_goes_at_once_with_the_readings_before_it(journal: Journal) -> None:
    """A tamper event does not wait: it and the readings before it go at once, in order."""
    clock = Clock()
    cloud = Cloud()
    metered(journal, cloud, clock, expected=100)
    journal.append([reading(1), reading(2)])
    assert cloud.uploads() == []
    journal.append_event(Event(2, END, 1, "tamper"))
    ups = cloud.uploads()
    assert [type(m).__name__ for m in ups] == ["ReadingBatch", "EventReport"]
    assert isinstance(ups[1], EventReport) and ups[1].seq == 3


def test_backlog_at_welcome_goes_at_once(journal: Journal) -> None:
    """Entries kept over a cut have waited already: they go as soon as Welcome arrives."""
    journal.append([reading(m) for m in range(50)])
    cloud = Cloud()
    metered(journal, cloud, Clock(), expected=1000)
    assert cloud.seqs() == list(range(1, 51))


def test_a_full_batch_goes_without_waiting(journal: Journal) -> None:
    """More waiting readings than batch_records fill a batch: it goes at once."""
    clock = Clock()
    cloud = Cloud()
    link = connect(journal, cloud, clock, upload_deadline=600.0, batch_records=10)
    journal.append([reading(m) for m in range(9)])
    assert cloud.uploads() == []
    journal.append([reading(9)])
    assert cloud.seqs() == list(range(1, 11))
    assert link.counters.batches_sent == 1 and link.counters.records_sent == 10


def test_window_full_flush_continues_after_ack(journal: Journal) -> None:
    """A due upload larger than the window goes on as Acks open room; nothing is left behind."""
    clock = Clock()
    cloud = Cloud(max_in_flight=1, max_batch_records=100)
    metered(journal, cloud, clock, expected=250)
    journal.append([reading(m) for m in range(250)])
    assert cloud.seqs() == list(range(1, 101))
    cloud.to_edge(Ack(up_to_seq=100))
    cloud.to_edge(Ack(up_to_seq=200))
    cloud.ack_all()
    assert cloud.seqs() == list(range(1, 251)) and journal.pending == 0


def test_schedule_rules_alone() -> None:
    """The sans-IO rule: nothing waiting is never due; each rule alone makes it due."""
    s = UploadSchedule(deadline=60, batch_records=3, expected=lambda: 2)
    assert not s.due(0) and s.wait(0) is None
    s.add(reading(1), 10)
    assert not s.due(69) and s.wait(20) == 50
    assert s.due(70)
    s.add(reading(2), 11)
    assert s.due(11)  # interval complete: 2 of 2
    s.reset()
    s.add(reading(1, END + 900), 20)
    s.add(Event(1, END, 1, "x"), 21)
    assert s.due(21)  # an event


def test_uploads_idle_for_the_update_agent(journal: Journal) -> None:
    """What the update agent asks before each chunk (gridedge.firmware, readings first):
    readings waiting for their schedule are not owed yet; once due they are, until acked."""
    clock = Clock()
    cloud = Cloud()
    metered(journal, cloud, clock, expected=5, deadline=600)
    link = cloud.link
    assert link is not None and link.uploads_idle()
    journal.append([reading(0), reading(1)])
    assert cloud.uploads() == [] and link.uploads_idle(), "waiting for the interval"
    journal.append([reading(m) for m in range(2, 5)])
    assert len(cloud.uploads()) == 1 and not link.uploads_idle(), "sent, not acked"
    cloud.ack_all()
    assert link.uploads_idle()
    journal.append_event(Event(7, END, 1, "tamper"))
    assert not link.uploads_idle(), "an event goes at once and waits for its Ack"
    cloud.ack_all()
    assert link.uploads_idle()
    link.connection_lost()
    assert not link.uploads_idle()


def test_link_quality_reports_wait_for_the_next_upload() -> None:
    """A meter's link quality report (gridedge.linkquality) makes no upload of its own: it
    waits and goes with the readings when their rules make them due (or at the deadline)."""
    from gridwire import AlarmKind

    s = UploadSchedule(deadline=60, batch_records=100, expected=lambda: 2)
    s.add(Event(1, END, AlarmKind.LINK_QUALITY, "-70 2 0"), 5)
    assert not s.due(5) and s.wait(5) == 60
    s.add(reading(1), 10)
    s.add(reading(2), 11)
    assert s.due(11)  # the interval's readings, the report along
    s.reset()
    s.add(Event(1, END, AlarmKind.LINK_QUALITY, "-70 2 0"), 20)
    assert s.due(80)  # alone, it goes at the deadline
