"""Meters and their load: what each simulated meter measures, interval by interval.

The population is a mini-grid: about 85% households and 15% small businesses
(shops, barbers, a grain mill, a welding workshop).  Load is in watts, as a
function of local time of day:

* households: a base load (fridge, phone chargers) of 15-60 W, a small
  morning bump around 07:00, a little at midday, and the evening peak around
  20:00 (lights, TV, radio, ironing) of 150-900 W;
* businesses: 50-200 W base, a working-day plateau 08:00-18:00 of 0.4-3 kW with
  a lunch dip, and little on Sundays;
* noise: multiplicative, about 25% per interval, and short spikes that make
  the interval's maximum demand 10-70% above its mean.

Voltage sags with load: the feeder drops up to 8% of nominal at the grid's
peak, and each meter's service drop a little more with its own current.  An
open relay or a supply outage means zero consumption for the time it lasts.

A field-like fleet (``make_meters(..., fleet="field")``, ``gridsim --fleet
field``) differs where it matters for what the uplink pays per reading: meter
ids are sparse 6-7 digit serials from several manufacturing lots (a real
installation is never 1..N), and about 5% of the meters are dormant (an
empty house, a closed shop: a few watts at most, flat all day).

Every random draw comes from a generator seeded with (seed, interval), taken
in meter order, so a meter's readings depend only on the seed and on the relay
commands it received, not on how fast the simulation runs or whether it was
restarted.

Tests: tests/sim/test_model.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from gridradio import INTERVAL_SECONDS, Flags, IntervalRecord

__all__ = ["FIRST_METER_ID", "FLEETS", "Meter", "MeterParams", "make_meters", "produce_interval"]

#: Meter ids are FIRST_METER_ID, FIRST_METER_ID + 1, ...
FIRST_METER_ID = 100_001

_NOMINAL_DV = 2300  # 230.0 V
_HOUSEHOLD, _BUSINESS, _DORMANT = "household", "business", "dormant"
#: The fleets make_meters can draw: "lab" (ids 100001.., households and businesses) and
#: "field" (sparse serials, some dormant meters).
FLEETS = ("lab", "field")


def _serials(count: int, seed: int) -> list[int]:
    """Sparse 6-7 digit serials: a few manufacturing lots, in lot order with gaps."""
    rng = random.Random(f"{seed}:serials")
    ids: list[int] = []
    lots = sorted(rng.sample(range(1, 99), max(1, min(8, count // 150 + 1))))
    per_lot = -(-count // len(lots))
    for lot in lots:
        serial = lot * 100_000 + rng.randrange(0, 20_000)
        for _ in range(per_lot):
            serial += 1 if rng.random() < 0.6 else rng.randint(2, 400)
            ids.append(serial)
    return ids[:count]


@dataclass(frozen=True, slots=True)
class MeterParams:
    """What does not change about a meter."""

    meter_id: int
    kind: str
    base_w: float
    peak_w: float
    pf: float  # 0..1
    drop_dv_per_w: float  # own service-drop voltage loss, 0.1 V per W
    report_offset: int  # seconds after an interval end the meter reports it
    hops: int
    rssi: int
    parent_id: int


class Meter:
    """A meter's changing state: register, relay, faults in progress."""

    __slots__ = (
        "energy",
        "outage_until",
        "params",
        "relay_changed_at",
        "relay_open",
        "relay_until",
        "silent_until",
        "tamper_pending",
    )

    def __init__(self, params: MeterParams, energy_wh: float) -> None:
        self.params = params
        self.energy = energy_wh
        self.relay_open = False
        self.relay_changed_at = 0
        self.relay_until = 0  # a prepaid cut-off (gridsim's relay-open fault) ends here
        self.silent_until = 0
        self.outage_until = 0
        self.tamper_pending = False


def make_meters(count: int, seed: int, fleet: str = "lab") -> list[Meter]:
    """``count`` meters drawn from ``seed`` (same seed and fleet, same meters)."""
    if fleet not in FLEETS:
        raise ValueError(f"unknown fleet {fleet!r} (one of {', '.join(FLEETS)})")
    ids = (_serials(count, seed) if fleet == "field"
           else [FIRST_METER_ID + i for i in range(count)])
    meters = []
    for i in range(count):
        rng = random.Random(f"{seed}:meter:{i}")
        business = rng.random() < 0.15
        dormant = fleet == "field" and rng.random() < 0.05
        meter_id = ids[i]
        hops = 1 + min(5, int(rng.expovariate(0.8)))
        params = MeterParams(
            meter_id=meter_id,
            kind=_DORMANT if dormant else _BUSINESS if business else _HOUSEHOLD,
            base_w=(rng.uniform(0, 4) if dormant else rng.uniform(50, 200) if business
                    else rng.uniform(15, 60)),
            peak_w=(0.0 if dormant else rng.uniform(400, 3000) if business
                    else rng.uniform(150, 900)),
            pf=rng.uniform(0.78, 0.93) if business else rng.uniform(0.92, 0.99),
            drop_dv_per_w=rng.uniform(0.005, 0.03),
            report_offset=rng.randrange(5, 295),
            hops=hops,
            rssi=-55 - 8 * hops - rng.randrange(0, 15),
            parent_id=0 if hops == 1 or i == 0 else ids[rng.randrange(0, i)],
        )
        meters.append(Meter(params, rng.uniform(0, 2_000_000)))
    return meters


def _bump(hour: float, centre: float, width: float) -> float:
    d = (hour - centre + 12) % 24 - 12
    return math.exp(-((d / width) ** 2))


def _smooth_step(x: float) -> float:
    return 0.0 if x <= 0 else 1.0 if x >= 1 else x * x * (3 - 2 * x)


def expected_load(params: MeterParams, local_hour: float, weekday: int) -> float:
    """Mean load in W at ``local_hour`` (0-24) on ``weekday`` (0 Monday .. 6 Sunday)."""
    if params.kind == _DORMANT:
        return params.base_w
    if params.kind == _HOUSEHOLD:
        shape = (
            0.35 * _bump(local_hour, 7.0, 0.8)
            + 0.10 * _bump(local_hour, 13.0, 2.0)
            + 1.00 * _bump(local_hour, 20.0, 1.5)
        )
        return params.base_w + params.peak_w * shape
    day = _smooth_step(local_hour - 7.5) * (1 - _smooth_step(local_hour - 18.0))
    lunch = 1 - 0.4 * _bump(local_hour, 13.0, 0.6)
    week = 0.3 if weekday == 6 else 0.8 if weekday == 5 else 1.0
    return params.base_w + params.peak_w * day * lunch * week


def produce_interval(
    meters: list[Meter], end: int, seed: int, tz_offset_h: float
) -> tuple[list[IntervalRecord], random.Random]:
    """Every meter's record for the interval ending at ``end`` (Unix seconds, UTC).

    Returns the records and the interval's random generator (positioned after
    the draws for the records) for the caller's fault decisions, so those are
    deterministic too.
    """
    rng = random.Random(seed * 1_000_003 + end // INTERVAL_SECONDS)
    start = end - INTERVAL_SECONDS
    mid_local = (end - INTERVAL_SECONDS / 2) / 3600 + tz_offset_h
    hour = mid_local % 24
    weekday = int((mid_local // 24 + 3) % 7)  # 1970-01-01 was a Thursday
    gauss = rng.gauss
    rand = rng.random
    powers = []
    total = 0.0
    capacity = 0.0
    for meter in meters:
        p = meter.params
        power = expected_load(p, hour, weekday) * max(0.2, 1 + 0.25 * gauss(0, 1))
        on = 1.0
        if meter.relay_open:
            on = max(0.0, min(1.0, (meter.relay_changed_at - start) / INTERVAL_SECONDS))
        elif meter.relay_changed_at > start:
            on = (end - meter.relay_changed_at) / INTERVAL_SECONDS
        if meter.outage_until > start:
            on *= max(0.0, min(1.0, (end - meter.outage_until) / INTERVAL_SECONDS))
        power *= on
        powers.append(power)
        total += power
        capacity += p.base_w + p.peak_w * 0.7
    feeder_drop = 0.08 * _NOMINAL_DV * min(1.5, total / capacity) if capacity else 0.0
    records = []
    for meter, power in zip(meters, powers, strict=True):
        p = meter.params
        meter.energy += power * INTERVAL_SECONDS / 3600
        flags = 0
        supplied = meter.outage_until <= end
        if meter.relay_open:
            flags |= Flags.RELAY_OPEN
        if meter.outage_until > start:
            flags |= Flags.OUTAGE
        if meter.tamper_pending:
            flags |= Flags.TAMPER
            meter.tamper_pending = False
        spike = 1.1 + 0.6 * rand()
        live = supplied and not meter.relay_open
        volts_dv = (
            int(_NOMINAL_DV - feeder_drop - p.drop_dv_per_w * power + 5 * gauss(0, 1))
            if supplied
            else 0
        )
        current = int(power / (volts_dv / 10 * p.pf) * 1000) if live and volts_dv > 0 else 0
        records.append(
            IntervalRecord._make(
                (
                    p.meter_id,
                    end,
                    int(meter.energy),
                    int(power * spike) if power > 0 else 0,
                    volts_dv,
                    current,
                    int(p.pf * 1000) if live else 1000,
                    int(flags),
                )
            )
        )
    return records, rng
