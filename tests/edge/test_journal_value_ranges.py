"""Issue 10 point 1, the edge's half: values outside gridwire's value ranges never enter the
journal, so they can never block the uplink; each refusal is counted and reported to the cloud."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridedge.journal import EVENT_RECORDS_REFUSED, Event
from gridwire import IntervalRecord

from support.journal_helpers import open_journal, rec


def test_point1_out_of_range_readings_are_refused_counted_and_reported(tmp_path: Path) -> None:
    """energy_wh = 2**63 fits the wire (u64) but no cloud column: the record is refused before
    journalling, the good ones of the same append are kept, and an event says what happened."""
    j = open_journal(tmp_path, clock=lambda: 1_700_000_500.0)
    bad = IntervalRecord(7, 1_700_000_100, 2**63, 1500, 2301, 6500, 950, 0)
    j.append([rec(1), bad, rec(2)])
    entries = [entry for _, entry in j.read(0, 10)]
    assert entries[:2] == [rec(1), rec(2)]
    (event,) = entries[2:]
    assert isinstance(event, Event) and event.kind == EVENT_RECORDS_REFUSED
    assert event.meter_id == 0 and event.time == 1_700_000_500
    assert "1 reading" in event.detail and "meter 7" in event.detail and "energy_wh" in event.detail
    assert j.stats().refused_total == 1
    assert j.watermarks() == {1: 1_700_000_100, 2: 1_700_000_100}  # meter 7: never delivered


@pytest.mark.parametrize(
    ("time", "detail", "why"),
    [(10**13, "", "time"), (2**63, "", "time"), (1_700_000_000, "a\x00b", "NUL")],
)
def test_point1_out_of_range_events_are_refused_and_counted(
    tmp_path: Path, time: int, detail: str, why: str
) -> None:
    """An event time beyond the u32 seconds range, or a NUL in its detail, is refused at
    append (ValueError, as for other invalid events), counted, and reported by an event."""
    j = open_journal(tmp_path)
    with pytest.raises(ValueError, match=why):
        j.append_event(Event(3, time, 1, detail))
    assert j.stats().refused_total == 1
    ((_, event),) = j.read(0, 10)
    assert isinstance(event, Event) and event.kind == EVENT_RECORDS_REFUSED
    assert why in event.detail
