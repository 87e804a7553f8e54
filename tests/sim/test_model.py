"""gridsim's load model: deterministic, shaped like a mini-grid day, relay and outage honoured."""

from __future__ import annotations

import itertools
import statistics

from gridradio import Flags
from gridsim.model import FIRST_METER_ID, expected_load, make_meters, produce_interval

T0 = 1767571200  # Monday 2026-01-05 00:00 UTC
IV = 900


def _day(seed: int, count: int = 200) -> dict[int, list]:
    meters = make_meters(count, seed)
    out: dict[int, list] = {}
    for k in range(1, 97):
        records, _ = produce_interval(meters, T0 + k * IV, seed, tz_offset_h=3.0)
        out[T0 + k * IV] = records
    return out


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    """Two runs with one seed give identical records; another seed gives different ones."""
    assert _day(5, 50) == _day(5, 50)
    assert _day(5, 50) != _day(6, 50)


def test_population_is_a_mini_grid_mix() -> None:
    """About 85% households and 15% businesses, ids from FIRST_METER_ID."""
    meters = make_meters(2000, 1)
    business = sum(m.params.kind == "business" for m in meters)
    assert 200 <= business <= 400
    assert [m.params.meter_id for m in meters[:2]] == [FIRST_METER_ID, FIRST_METER_ID + 1]


def test_households_peak_in_the_evening_businesses_by_day() -> None:
    """Household load peaks around 20:00 local time; business load is highest in working hours."""
    meters = make_meters(500, 3)
    house = next(m.params for m in meters if m.params.kind == "household")
    shop = next(m.params for m in meters if m.params.kind == "business")
    house_day = [expected_load(house, h, 0) for h in range(24)]
    shop_day = [expected_load(shop, h, 0) for h in range(24)]
    assert max(range(24), key=house_day.__getitem__) in (19, 20, 21)
    assert house_day[3] < house_day[20] / 3
    assert 9 <= max(range(24), key=shop_day.__getitem__) <= 17
    assert expected_load(shop, 11, 6) < expected_load(shop, 11, 2)  # quiet Sunday


def test_voltage_sags_when_the_grid_is_loaded() -> None:
    """Mean voltage at the evening peak is lower than at night."""
    day = _day(2)
    night = statistics.mean(r.voltage_dv for r in day[T0 + 1 * 3600])  # 04:00 local
    peak = statistics.mean(r.voltage_dv for r in day[T0 + 17 * 3600])  # 20:00 local
    assert peak < night - 20  # more than 2 V lower


def test_open_relay_means_zero_consumption_and_flag() -> None:
    """A meter with its relay open records no energy, demand or current, and the RELAY_OPEN flag."""
    meters = make_meters(3, 1)
    meters[0].relay_open = True
    meters[0].relay_changed_at = T0
    before = int(meters[0].energy)
    records, _ = produce_interval(meters, T0 + IV, 1, 3.0)
    r = records[0]
    assert r.energy_wh == before and r.max_demand_w == 0 and r.current_ma == 0
    assert r.flags & Flags.RELAY_OPEN
    assert records[1].max_demand_w > 0 and not records[1].flags & Flags.RELAY_OPEN


def test_outage_zero_supply_and_flag() -> None:
    """During an outage the meter records zero voltage and consumption with the OUTAGE flag."""
    meters = make_meters(2, 1)
    meters[0].outage_until = T0 + 3 * IV
    before = int(meters[0].energy)
    records, _ = produce_interval(meters, T0 + IV, 1, 3.0)
    assert records[0].voltage_dv == 0 and records[0].energy_wh == before
    assert records[0].flags & Flags.OUTAGE


def test_field_fleet_has_sparse_serials_and_dormant_meters() -> None:
    """--fleet field: unique sparse 6-7 digit ids in several lots, ~5% dormant meters with a
    flat few watts; the lab fleet is unchanged by the option's existence."""
    meters = make_meters(1000, 11, "field")
    ids = [m.params.meter_id for m in meters]
    assert len(set(ids)) == 1000 and all(100_000 <= i <= 9_999_999 for i in ids)
    gaps = [b - a for a, b in itertools.pairwise(ids)]
    assert sum(g > 1 for g in gaps) > 200  # sparse, not 1..N
    dormant = [m.params for m in meters if m.params.kind == "dormant"]
    assert 20 <= len(dormant) <= 90
    assert all(expected_load(p, h, 2) < 5 for p in dormant for h in (3.0, 13.0, 20.0))
    lab = make_meters(50, 11)
    assert [m.params for m in lab] == [m.params for m in make_meters(50, 11, "lab")]
    assert lab[0].params.meter_id == FIRST_METER_ID
