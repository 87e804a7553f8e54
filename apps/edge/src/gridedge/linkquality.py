"""Each meter's radio link quality (RSSI, hops, parent), reported to the cloud as compact
events of kind 0x8009 LINK_QUALITY, so that the cloud's API can show it beside the meter.

Why events and not a field on every reading: the module tells the edge a meter's RSSI, hops
and parent only in MeterJoin and MeshStatus frames (docs/radio.md), not with each interval
report, and they change rarely (a route change, a new obstacle).  A field on each reading would
cost bytes on the metered link for a value that did not change; an event per meter when the
value *changed* costs almost nothing and rides the exactly-once path of the journal like any
event (one sequence space, one Ack), with no change to gridwire.

What is sent, per meter, as ``EventReport(meter_id, time, kind=0x8009, detail)`` with
``detail = "<rssi dBm> <hops> <parent meter id, 0: the module>"``, e.g. ``"-71 2 100004"``:

* the first time the edge knows the meter's link (after each start of gridedge);
* then when the hops or the parent changed, or the RSSI moved by ``RSSI_STEP`` dB or more from
  what was last reported, but no sooner than ``[radio] link_report_gap`` seconds (24 h by
  default; 0 turns the reports off) after the meter's last report.

Cost (docs/edge.md, "Link quality reports", measured with make bench-link): one event is a
25-32 byte gridwire frame (30 for ``"-71 2 100004"``), about 55 bytes on the socket with its Ack
and TLS record; a day's first report of 1,000 meters adds 0.55-0.63 byte per reading to the
6.19 the link costs without them.  With stable links that is once per start of gridedge; the
worst case, every meter's link changing all the time, repeats it every gap.  The events wait
for the next upload (gridedge.uplink.schedule.NOT_URGENT) rather than making one.

The check runs every ``CHECK_EVERY`` seconds over the radio link's registry (a few microseconds
a meter); a journal that cannot store the events (full disk) is retried at the next check.

Tests: tests/edge/test_link_quality.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gridwire import AlarmKind
from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gridedge.journal import Event, Journal, JournalError
from gridedge.radio import MeterStatus, RadioLink

__all__ = ["CHECK_EVERY", "LINK_QUALITY", "RSSI_STEP", "LinkQualityReports",
           "LinkQualityService", "detail", "parse_detail"]

#: EventReport.kind of a link quality report (the unit's event range, docs/protocol.md).
LINK_QUALITY = AlarmKind.LINK_QUALITY
#: An RSSI change smaller than this (dB) is noise, not worth a report.
RSSI_STEP = 6
CHECK_EVERY = 60.0


def detail(rssi: int, hops: int, parent_id: int) -> str:
    """The event's detail: ``"<rssi> <hops> <parent>"``."""
    return f"{rssi} {hops} {parent_id}"


def parse_detail(text: str) -> tuple[int, int, int]:
    """(rssi, hops, parent_id) from a detail; ValueError if it is not one."""
    rssi, hops, parent = (int(v) for v in text.split())
    return rssi, hops, parent


@dataclass(slots=True)
class _Reported:
    rssi: int
    hops: int
    parent_id: int
    at: float


class LinkQualityReports:
    """Which meters' link quality is worth an event now (the rules in the module docstring)."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self._reported: dict[int, _Reported] = {}

    def due(self, meters: Iterable[MeterStatus], now: float) -> list[Event]:
        """The events to journal now; call :meth:`stored` once they are stored."""
        if self.gap <= 0:
            return []
        out = []
        for m in meters:
            if m.rssi is None or m.hops is None:
                continue
            parent = m.parent_id or 0
            last = self._reported.get(m.meter_id)
            if last is not None and (
                now - last.at < self.gap
                or (last.hops == m.hops and last.parent_id == parent
                    and abs(last.rssi - m.rssi) < RSSI_STEP)):
                continue
            out.append(Event(m.meter_id, int(now), LINK_QUALITY, detail(m.rssi, m.hops, parent)))
        return out

    def stored(self, events: Iterable[Event], now: float) -> None:
        for e in events:
            rssi, hops, parent = parse_detail(e.detail)
            self._reported[e.meter_id] = _Reported(rssi, hops, parent, now)


class LinkQualityService(service.Service):
    """Every ``CHECK_EVERY`` seconds: the due link quality events into the journal."""

    log = Logger()

    def __init__(self, journal: Journal, radio_link: Callable[[], RadioLink | None],
                 clock: IReactorTime, gap: float, every: float = CHECK_EVERY) -> None:
        self.journal = journal
        self.radio_link = radio_link
        self.clock = clock
        self.reports = LinkQualityReports(gap)
        self.every = every
        self._loop: LoopingCall | None = None
        self._failing = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.reports.gap > 0:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.every, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        link = self.radio_link()
        if link is None or not self.journal.is_open:
            return
        now = self.clock.seconds()
        events = self.reports.due(link.meters(), now)
        if not events:
            return
        try:
            self.journal.append_events(events)
        except JournalError as exc:
            if not self._failing:
                self.log.warn("link quality reports not stored, retrying: {error}",
                              error=str(exc))
            self._failing = True
            return
        self._failing = False
        self.reports.stored(events, now)
