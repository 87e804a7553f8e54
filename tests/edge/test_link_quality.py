"""Link quality reports (gridedge.linkquality): which meters get a LINK_QUALITY event and when,
and the service journalling them into a real journal for the cloud."""

from __future__ import annotations

from pathlib import Path

from gridedge.journal import Event, Journal
from gridedge.linkquality import (
    LINK_QUALITY,
    LinkQualityReports,
    LinkQualityService,
    parse_detail,
)
from gridedge.radio import MeterStatus
from gridwire import AlarmKind, EventReport
from gridwire._codec import encode_message
from twisted.internet.task import Clock


def status(meter: int, rssi: int | None, hops: int | None, parent: int | None = 0) -> MeterStatus:
    return MeterStatus(meter, 1.0, 1.0, None, True, hops, rssi, parent, None, 0, None, 0)


def test_first_report_then_only_real_changes_after_the_gap() -> None:
    """A meter is reported once its link is known; later only a change of hops or parent or
    an RSSI step of 6 dB is reported, and not before the gap has passed."""
    reports = LinkQualityReports(gap=3600)
    first = reports.due([status(1, -70, 2, 5), status(2, None, None)], now=100)
    assert [(e.meter_id, e.kind, e.detail) for e in first] == [(1, LINK_QUALITY, "-70 2 5")]
    reports.stored(first, 100)
    assert reports.due([status(1, -60, 1, 0)], now=200) == [], "within the gap"
    assert reports.due([status(1, -74, 2, 5)], now=4000) == [], "4 dB is noise"
    moved = reports.due([status(1, -76, 2, 5)], now=4000)
    assert [e.detail for e in moved] == ["-76 2 5"]
    assert [e.detail for e in reports.due([status(1, -70, 3, 7)], now=4000)] == ["-70 3 7"]
    assert LinkQualityReports(gap=0).due([status(1, -70, 2)], now=1) == [], "0: off"


def test_a_report_is_a_few_dozen_bytes_on_the_wire() -> None:
    """The event the cloud receives: kind 0x8009 with "<rssi> <hops> <parent>", 25-32 bytes."""
    assert AlarmKind(LINK_QUALITY) == AlarmKind.LINK_QUALITY
    assert parse_detail("-71 2 100004") == (-71, 2, 100004)
    sizes = [len(encode_message(EventReport(seq=123_456_789, meter_id=1_234_567,
                                            time=1_796_000_000, kind=LINK_QUALITY, detail=d)))
             for d in ("-55 1 0", "-71 2 100004", "-103 6 1234567")]
    assert sizes == sorted(sizes) and sizes[0] >= 20 and sizes[-1] <= 32, sizes


class FakeLink:
    def __init__(self, meters: list[MeterStatus]) -> None:
        self._meters = meters

    def meters(self) -> list[MeterStatus]:
        return self._meters


def test_service_journals_due_reports_for_the_cloud(tmp_path: Path) -> None:
    """Every check puts the due reports into the journal as events (sent like any event);
    nothing is journalled again while nothing changed."""
    clock = Clock()
    clock.advance(1_800_000_000)
    journal = Journal(tmp_path / "journal.db", max_bytes=8 << 20, clock=clock.seconds)
    journal.open()
    link = FakeLink([status(100001, -63, 1, 0), status(100002, -80, 3, 100001)])
    svc = LinkQualityService(journal, lambda: link, clock, gap=86400)  # type: ignore[arg-type,return-value]
    svc.startService()
    clock.advance(60)
    clock.advance(60)
    entries = [e for _, e in journal.read(journal.first_pending_seq or 1, 100)]
    assert entries == [Event(100001, 1_800_000_060, LINK_QUALITY, "-63 1 0"),
                       Event(100002, 1_800_000_060, LINK_QUALITY, "-80 3 100001")]
    svc.stopService()
    journal.close()
