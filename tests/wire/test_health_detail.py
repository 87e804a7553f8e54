"""HealthSummary: the detail of a HEALTH_SUMMARY event, both ways, and tolerant of new keys."""

from __future__ import annotations

import pytest
from gridwire import AlarmKind, EventReport, HealthSummary, ProtocolError
from hypothesis import given
from hypothesis import strategies as st

VALUE = st.one_of(st.none(), st.integers(0, 2**64 - 1))


@given(st.builds(HealthSummary, journal_backlog=VALUE, journal_oldest_age=VALUE,
                 last_radio_frame=VALUE, disk_free_kib=VALUE, disk_total_kib=VALUE,
                 memory_available_kib=VALUE, memory_total_kib=VALUE, uptime=VALUE,
                 gridedge_uptime=VALUE, restarts=VALUE))
def test_round_trip_and_fits_an_event(summary: HealthSummary) -> None:
    """Any summary survives to_detail/from_detail and fits an EventReport's detail."""
    detail = summary.to_detail()
    assert HealthSummary.from_detail(detail) == summary
    EventReport(seq=1, meter_id=0, time=1, kind=AlarmKind.HEALTH_SUMMARY, detail=detail)


def test_unknown_keys_are_skipped_and_missing_ones_are_none() -> None:
    parsed = HealthSummary.from_detail("b=3 zz=9 u=100")
    assert parsed == HealthSummary(journal_backlog=3, uptime=100)
    assert HealthSummary.from_detail("") == HealthSummary()


@pytest.mark.parametrize("detail", ["b", "b=", "b=-1", "b=x", "b=1.5", "b=\u0661"])
def test_malformed_pairs_are_refused(detail: str) -> None:
    with pytest.raises(ValueError):
        HealthSummary.from_detail(detail)


def test_values_are_checked_on_construction() -> None:
    with pytest.raises(ProtocolError):
        HealthSummary(journal_backlog=-1)
