"""A reproducible day of smart-meter interval readings for the wire benchmark.

1000 meters (by default) on 10 feeders, 96 fifteen-minute intervals, deterministic
by seed.  Realism that matters for encoding size:

- meter ids are sparse 6-7 digit serials from three manufacturing lots (runs
  of consecutive serials broken by gaps of up to 400), and the journal holds
  each interval's readings in the order the meters report (each meter's fixed
  report delay, 5-294 s, as in the field), not sorted by id;
- three customer classes (small and medium households, small businesses) with
  morning and evening peaks, per-meter timing jitter, appliance spikes;
- cumulative energy registers (Wh) that start anywhere between 1 and 40 MWh;
- voltage sags with feeder load and with distance along the feeder;
- power factor by class, current derived from power, voltage and power factor;
- one feeder outage (OUTAGE flag, no voltage), prepaid relays opened for lack
  of credit (RELAY_OPEN), a tamper flag, and reads that failed and were
  estimated (ESTIMATED); about 1% of reads arrive one poll late, out of order.

The journal order is the edge's: per interval, meters in poll order, late reads
appended after the next interval's poll.  Each record gets the next journal
sequence number.  (apps/sim has its own, richer simulator; this one is kept
separate so that the benchmark's numbers do not move when that one changes.)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DAY_START = 1_772_409_600  # 2026-03-02 00:00:00 UTC, a Monday
INTERVAL = 900
NOMINAL_DV = 2300  # 230.0 V

RELAY_OPEN, TAMPER, OUTAGE, ESTIMATED = 0x01, 0x02, 0x04, 0x08

Row = tuple[int, int, int, int, int, int, int, int]


@dataclass(slots=True)
class _Meter:
    meter_id: int
    feeder: int
    position: float  # 0 = at the transformer, 1 = far end of the feeder
    kind: str
    base_w: float
    morning_w: float
    evening_w: float
    day_w: float
    shift_h: float
    pf: float
    energy: float
    credit_cut: tuple[int, int] | None  # (first, last) interval with the relay open


def _meters(rng: random.Random, count: int) -> list[_Meter]:
    ids: list[int] = []
    lots = [(412_000, 0.45), (1_735_000, 0.35), (5_201_000, 0.20)]
    for base, share in lots:
        next_id = base
        for _ in range(round(count * share)):
            next_id += 1 if rng.random() < 0.6 else rng.randint(2, 400)
            ids.append(next_id)
    ids = sorted(ids[:count])
    while len(ids) < count:
        ids.append(ids[-1] + 1)
    meters = []
    for index, meter_id in enumerate(ids):
        feeder = index * 10 // count
        kind = rng.choices(["small", "medium", "business"], [0.65, 0.27, 0.08])[0]
        if kind == "small":
            base, morning, evening, day, pf = (
                rng.uniform(15, 40),
                rng.uniform(30, 120),
                rng.uniform(80, 300),
                rng.uniform(0, 30),
                rng.uniform(0.82, 0.95),
            )
        elif kind == "medium":
            base, morning, evening, day, pf = (
                rng.uniform(60, 150),
                rng.uniform(200, 700),
                rng.uniform(400, 1500),
                rng.uniform(20, 200),
                rng.uniform(0.88, 0.98),
            )
        else:
            base, morning, evening, day, pf = (
                rng.uniform(40, 120),
                rng.uniform(100, 400),
                rng.uniform(100, 600),
                rng.uniform(300, 3000),
                rng.uniform(0.75, 0.9),
            )
        cut = None
        if rng.random() < 0.02:
            first = rng.randint(10, 80)
            cut = (first, min(95, first + rng.randint(4, 40)))
        meters.append(
            _Meter(
                meter_id=meter_id,
                feeder=feeder,
                position=(index % (count // 10 or 1)) / (count // 10 or 1),
                kind=kind,
                base_w=base,
                morning_w=morning,
                evening_w=evening,
                day_w=day,
                shift_h=rng.gauss(0, 0.5),
                pf=pf,
                energy=rng.uniform(1_000_000, 40_000_000),
                credit_cut=cut,
            )
        )
    return meters


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


def _demand(meter: _Meter, hour: float) -> float:
    h = hour - meter.shift_h
    if meter.kind == "business":
        day = meter.day_w * (1.0 if 7.5 <= h <= 18.5 else 0.05)
    else:
        day = meter.day_w * _bump(h, 13, 3)
    return (
        meter.base_w
        + meter.morning_w * _bump(h, 6.8, 0.9)
        + meter.evening_w * _bump(h, 19.6, 1.6)
        + day
    )


def make_day(seed: int = 2, meters: int = 1000, intervals: int = 96) -> list[list[Row]]:
    """The journal of one day, grouped by poll (one list of rows per 15-minute interval).

    Rows are (meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
    current_ma, power_factor, flags) in journal order.
    """
    rng = random.Random(seed)
    fleet = _meters(rng, meters)
    delays = random.Random(seed * 7919 + 1)
    offsets = [delays.randrange(5, 295) for _ in fleet]
    report_order = sorted(range(len(fleet)), key=lambda i: (offsets[i], i))
    outage_feeder, outage = 7, range(56, 62)  # 14:00 - 15:30
    tamper = (rng.randrange(meters), rng.randrange(intervals))
    polls: list[list[Row]] = []
    late: list[Row] = []
    for k in range(intervals):
        end = DAY_START + INTERVAL * (k + 1)
        hour = (k + 0.5) * 0.25
        loads = [_demand(m, hour) * rng.lognormvariate(0, 0.25) for m in fleet]
        feeder_load = [0.0] * 10
        for meter, load in zip(fleet, loads, strict=True):
            feeder_load[meter.feeder] += load
        rows: list[Row] = list(late)
        late = []
        produced: list[Row | None] = [None] * len(fleet)
        for index, (meter, load) in enumerate(zip(fleet, loads, strict=True)):
            flags = 0
            cut = meter.credit_cut
            if meter.feeder == outage_feeder and k in outage:
                flags |= OUTAGE
                row = (meter.meter_id, end, int(meter.energy), 0, 0, 0, 0, flags)
            elif cut is not None and cut[0] <= k <= cut[1]:
                flags |= RELAY_OPEN
                volts = NOMINAL_DV + rng.randint(-30, 40)
                row = (meter.meter_id, end, int(meter.energy), 0, volts, 0, 0, flags)
            else:
                spike = 0.0
                if rng.random() < 0.08:
                    spike = rng.choice([900, 1200, 1500, 2000])  # kettle, iron, heater
                    load += spike * rng.uniform(0.02, 0.2)
                meter.energy += load * 0.25
                peak = load * (1 + rng.expovariate(3.0)) + spike
                sag = feeder_load[meter.feeder] / 60_000 * (60 + 180 * meter.position)
                volts = round(NOMINAL_DV + 45 - sag + rng.gauss(0, 4))
                pf = min(0.999, max(0.5, meter.pf + rng.gauss(0, 0.015)))
                inst = load * rng.lognormvariate(0, 0.3)
                current = round(inst / (volts / 10 * pf) * 1000)
                row = (
                    meter.meter_id,
                    end,
                    int(meter.energy),
                    round(peak),
                    volts,
                    current,
                    round(pf * 1000),
                    flags,
                )
            if index == tamper[0] and k == tamper[1]:
                row = (*row[:7], row[7] | TAMPER)
            roll = rng.random()
            if roll < 0.003:
                row = (*row[:7], row[7] | ESTIMATED)  # read failed; value estimated
            if roll > 0.99 and k + 1 < intervals:
                late.append(row)  # answered on the retry during the next poll
            else:
                produced[index] = row
        rows.extend(r for r in (produced[i] for i in report_order) if r is not None)
        polls.append(rows)
    polls[-1].extend(late)
    return polls
