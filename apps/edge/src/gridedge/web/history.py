"""What the page shows of the last day: each meter's recent records and events, in memory.

Why a copy here: the journal forgets a record once the cloud acknowledged it, which on a good
link is seconds after it arrived, yet the technician wants the last 24 hours of a meter.  So
:class:`HistorySink` stands between the radio link and the journal and, after the journal
stored a burst, keeps the newest ``keep`` records of each meter here.  Nothing here is durable:
after a restart the page shows what arrived since, which the meter page says.

Memory: records are packed into one ``bytearray`` ring per meter (26 bytes a record), so the
default 96 intervals (24 h of 15-minute intervals) cost 2.5 KB a meter, 2.5 MB for 1,000
meters; events are a short deque per meter.  Every change bumps a sequence number, which is
how the live view (gridedge.web.live) finds what to push, and calls the ``listeners`` (the live
view's :meth:`~gridedge.web.live.LiveHub.changed`), which is how it knows when.  Changes that
are not records (a join, a leave, a mesh status, a relay confirmation) come from the radio
link's ``on_meter_change`` hook (wired by gridedge.services) as :meth:`History.touch`.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gridwire import Flags, IntervalRecord

from gridedge.radio import RecordSink

__all__ = ["History", "HistorySink", "MeterEvent"]

_PACK = struct.Struct("<IQIHIhH")  # interval_end .. flags; meter_id is the ring's key
_EVENTS_PER_METER = 16
_UNIT_EVENTS = 50


@dataclass(frozen=True, slots=True)
class MeterEvent:
    at: float
    meter_id: int
    text: str


class _Ring:
    __slots__ = ("buf", "count", "head")

    def __init__(self, keep: int) -> None:
        self.buf = bytearray(keep * _PACK.size)
        self.count = 0
        self.head = 0  # slot of the next write


class History:
    """The newest ``keep`` records and a few events of every meter, and the unit's events."""

    def __init__(self, clock: Callable[[], float], keep: int = 96) -> None:
        self.clock = clock
        self.keep = keep
        self._rings: dict[int, _Ring] = {}
        self._events: dict[int, collections.deque[MeterEvent]] = {}
        self.unit_events: collections.deque[MeterEvent] = collections.deque(maxlen=_UNIT_EVENTS)
        self.seq = 0
        #: meter id -> sequence number of its last change (for the live view)
        self.changed: dict[int, int] = {}
        #: called (no arguments) after every change; must not raise
        self.listeners: list[Callable[[], None]] = []

    def add(self, records: Sequence[IntervalRecord]) -> None:
        for r in records:
            ring = self._rings.get(r.meter_id)
            if ring is None:
                ring = self._rings[r.meter_id] = _Ring(self.keep)
            prev = self._last(ring)
            _PACK.pack_into(ring.buf, ring.head * _PACK.size, r.interval_end, r.energy_wh,
                            r.max_demand_w, r.voltage_dv, r.current_ma, r.power_factor, r.flags)
            ring.head = (ring.head + 1) % self.keep
            ring.count = min(self.keep, ring.count + 1)
            self._flag_events(r, prev)
            self.touch(r.meter_id)

    def touch(self, meter_id: int) -> None:
        """Mark ``meter_id`` changed (a record, a relay confirmation, an event)."""
        self.seq += 1
        self.changed[meter_id] = self.seq
        for listener in self.listeners:
            listener()

    def note(self, meter_id: int, text: str) -> None:
        """An event worth showing (meter 0: the unit itself)."""
        event = MeterEvent(self.clock(), meter_id, text)
        if meter_id:
            self._events.setdefault(
                meter_id, collections.deque(maxlen=_EVENTS_PER_METER)).append(event)
        self.unit_events.append(event)
        self.touch(meter_id)

    def records(self, meter_id: int) -> list[IntervalRecord]:
        """The meter's kept records, oldest first."""
        ring = self._rings.get(meter_id)
        if ring is None:
            return []
        start = (ring.head - ring.count) % self.keep
        out = []
        for i in range(ring.count):
            slot = (start + i) % self.keep
            out.append(IntervalRecord(meter_id, *_PACK.unpack_from(ring.buf, slot * _PACK.size)))
        return out

    def last(self, meter_id: int) -> IntervalRecord | None:
        ring = self._rings.get(meter_id)
        fields = self._last(ring) if ring is not None else None
        return IntervalRecord(meter_id, *fields) if fields is not None else None

    def events(self, meter_id: int) -> list[MeterEvent]:
        return list(self._events.get(meter_id, ()))

    def changed_since(self, seq: int) -> list[int]:
        return [m for m, s in self.changed.items() if s > seq]

    def _last(self, ring: _Ring) -> tuple[int, ...] | None:
        if ring.count == 0:
            return None
        slot = (ring.head - 1) % self.keep
        return _PACK.unpack_from(ring.buf, slot * _PACK.size)

    def _flag_events(self, r: IntervalRecord, prev: tuple[int, ...] | None) -> None:
        before = prev[-1] if prev is not None else 0
        for flag, on, off in ((Flags.TAMPER, "tamper reported", None),
                              (Flags.OUTAGE, "supply lost", "supply back"),
                              (Flags.RELAY_OPEN, "relay open", "relay closed")):
            if r.flags & flag and not before & flag:
                self.note(r.meter_id, on)
            elif off and prev is not None and before & flag and not r.flags & flag:
                self.note(r.meter_id, off)


class HistorySink:
    """A RecordSink in front of the journal: stores there first, then keeps a copy in
    ``history``.  Errors of the journal pass through untouched, so the radio link's retry rules
    are the journal's."""

    def __init__(self, journal: RecordSink, history: History) -> None:
        self.journal = journal
        self.history = history

    def append(self, records: Sequence[IntervalRecord]) -> None:
        self.journal.append(records)
        self.history.add(records)

    def watermarks(self) -> Mapping[int, int]:
        return self.journal.watermarks()
