"""Prepaid credit holds while the unit is offline: real `gridsim` (ground truth), `gridedge run`,
`gridcloud serve` behind a fault proxy, `gridcloud pipeline`, `gridcloud api` and PostgreSQL,
time-scaled (gridsim at 1,800x: a simulated day in 48 s).

The story of the issue: a prepaid meter's unit holds its allowance, the link goes down for two
simulated days, the credit runs out and the unit opens the relay on its own at the reading that
used it up (gridsim's ground truth shows the relay open from the next interval on); a top-up
made in the cloud meanwhile closes it soon after the link returns; afterwards the ledger and the
meter's energy agree to the Wh and the minor unit.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gridcloud.api import keys
from gridsim.truth import GroundTruth
from gridwire import AlarmKind, Flags, IntervalRecord

from support.api_harness import ApiProcess, query
from support.edge_harness import (
    BIN,
    Cloud,
    Edge,
    Proc,
    Sim,
    edge_config,
    make_pki,
    running,
)
from support.proxy import FaultProxy
from support.waiting import wait_until

pytestmark = pytest.mark.slow

METERS = 3
SPEED = 1800
DAY = 86400
INTERVAL = 900
PRICE = 25  # minor units per kWh, flat, no standing charge: the count can be exact


def rfc3339(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace(
        "+00:00", "Z")


class World:
    def __init__(self, root: Path, dsn: str) -> None:
        self.root, self.dsn = root, dsn
        self.data = root / "data"
        pki = make_pki(root, self.data)
        self.cloud = Cloud(root, pki, dsn).start()
        self.api = ApiProcess(dsn, root / "api.log", {"rate_limit": 1000.0}).start()
        self.key = keys.create_key(dsn, "operator", ["read", "write"])
        self.proxy = FaultProxy("127.0.0.1", self.cloud.port).start()
        self.sim = Sim(root, root / "radio", meters=METERS, speed=SPEED, duration="5d",
                       extra=("--log-every", "0.5"))
        self.edge = Edge(root, self.data, edge_config(
            self.data, uplink_port=self.proxy.port, radio=self.sim.port))
        self.pipeline = Proc("pipeline", [str(BIN / "gridcloud"), "pipeline", "--dsn", dsn,
                                          "--config", str(self._pipeline_config())],
                             root / "pipeline.log")

    def _pipeline_config(self) -> Path:
        path = self.root / "pipeline.toml"
        path.write_text("[pipeline]\npoll_interval = 0.5\nsweep_interval = 5.0\n")
        return path

    @property
    def logs(self) -> tuple[Path, ...]:
        return (self.cloud.log, self.api.log, self.edge.log, self.sim.log, self.pipeline.log)

    def post(self, path: str, **body: Any) -> dict[str, Any]:
        r = self.api.call("POST", path, self.key, json=body)
        assert r.status_code in (200, 201), r.text
        data: dict[str, Any] = r.json()
        return data

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return query(self.dsn, statement, params)

    def newest(self, meter: int) -> int:
        (end,), = self.sql("SELECT extract(epoch FROM max(interval_end))::bigint FROM readings "
                           "WHERE meter_id = %s", (meter,))
        return int(end or 0)

    def truth(self, meter: int) -> list[IntervalRecord]:
        with GroundTruth(self.sim.truth_path) as truth:
            return sorted(truth.records(meter), key=lambda r: r.interval_end)

    def commands(self, meter: int, action: str, origin: str) -> list[tuple[Any, ...]]:
        return self.sql("SELECT id, state, reason FROM commands WHERE meter_id = %s AND "
                        "action = %s AND origin = %s ORDER BY id", (meter, action, origin))

    def backlog(self) -> int:
        (n,), = self.sql("SELECT coalesce(sum(e.last_seq - p.done_seq), 0) FROM edges e "
                         "JOIN pipeline_progress p USING (edge_id)")
        return int(n)

    def stop(self) -> None:
        for proc in (self.edge.proc, self.pipeline, self.sim.proc):
            if proc.popen is not None and proc.popen.poll() is None:
                proc.stop()
        self.proxy.close()
        self.api.stop()


@pytest.fixture
def world(tmp_path: Path, pg_dsn: str) -> Iterator[World]:
    w = World(tmp_path, pg_dsn)
    try:
        with running(w.cloud):
            yield w
    finally:
        w.stop()


def test_credit_runs_out_offline_and_a_topup_closes_the_relay_after_reconnect(
        world: World) -> None:
    w = world
    w.sim.start()
    w.edge.start()
    wait_until(lambda: len(w.sql("SELECT DISTINCT meter_id FROM readings")) == METERS, 60,
               "every meter's readings in PostgreSQL", w.logs)
    # A simulated day of readings tells each meter's daily energy; the busiest one is prepaid.
    (start,), = w.sql("SELECT extract(epoch FROM min(interval_end))::bigint FROM readings")
    wait_until(lambda: all(
        w.newest(m) >= start + DAY for (m,) in w.sql("SELECT DISTINCT meter_id FROM readings")),
               120, "a simulated day of readings", w.logs)
    daily = w.sql("SELECT meter_id, max(energy_wh) - min(energy_wh) FROM readings "
                  "WHERE interval_end <= to_timestamp(%s) GROUP BY meter_id ORDER BY 2 DESC",
                  (start + DAY,))
    meter, day_wh = int(daily[0][0]), int(daily[0][1])
    assert day_wh > 1000, daily

    # The account: credit for about 0.6 of a day, charged from the newest reading on.
    customer = w.post("/v1/customers", name="Ada", reference="C-1")["customer_id"]
    tariff = w.post("/v1/tariffs", name="flat", currency="EUR", timezone="UTC",
                    standing_charge=0, band_start=[0], band_price=[PRICE])["tariff_id"]
    active_from = w.newest(meter)
    w.post("/v1/accounts", meter_id=meter, customer_id=customer, tariff_id=tariff,
           low_balance=0, active_from=rfc3339(active_from))
    credit = day_wh * 6 // 10 * PRICE // 1000
    w.post("/v1/topups", meter_id=meter, amount=credit, reference="initial")
    w.pipeline.start()

    # The unit holds the first allowance; then the link goes down.
    def delivered() -> list[tuple[Any, ...]]:
        return [c for c in w.commands(meter, "set_allowance", "pipeline") if c[1] == "succeeded"]
    wait_until(lambda: bool(delivered()), 60, "the first allowance on the unit", w.logs)
    w.proxy.refuse(True)
    w.proxy.cut()
    cut_at = time.monotonic()
    (first,) = w.sql("SELECT generation, allowance_wh, extract(epoch FROM anchor_end)::bigint, "
                     "anchor_wh, balance, carried_milli FROM credit_allowances "
                     "WHERE meter_id = %s", (meter,))
    generation, allowance_wh, anchor_end, anchor_wh, balance, carried = (int(v) for v in first)
    # the Wh that take the ledger's balance to zero, at the tariff, from what it carried
    assert allowance_wh == -(-(balance * 1000 - carried) // PRICE) and 0 < balance <= credit
    offline_from = w.newest(meter)

    # The credit runs out offline: gridsim's truth shows the relay open, from the unit alone.
    def opened() -> list[IntervalRecord]:
        return [r for r in w.truth(meter) if r.flags & Flags.RELAY_OPEN]
    wait_until(lambda: bool(opened()), 120, "the unit to open the relay offline", w.logs)
    assert w.newest(meter) == offline_from  # nothing reached the cloud meanwhile
    truth = w.truth(meter)
    used_up = next(r for r in truth if r.interval_end > anchor_end
                   and r.energy_wh - anchor_wh >= allowance_wh)
    first_open = opened()[0]
    # The relay opens right after the reading that used the allowance up: the next interval
    # is the first the meter reports it open (or the one after, if the frame went out late).
    assert used_up.interval_end < first_open.interval_end <= used_up.interval_end + 2 * INTERVAL
    assert not any(r.flags & Flags.RELAY_OPEN for r in truth
                   if r.interval_end <= used_up.interval_end)
    # The ledger would have reached zero at that same reading: the last reading before it
    # still left credit at the tariff.
    before = [r for r in truth if r.interval_end < used_up.interval_end][-1]
    assert (before.energy_wh - anchor_wh) * PRICE + carried < balance * 1000
    assert (used_up.energy_wh - anchor_wh) * PRICE + carried >= balance * 1000

    # A top-up in the cloud meanwhile (two more days of credit): a new allowance waits.
    w.post("/v1/topups", meter_id=meter, amount=2 * day_wh * PRICE // 1000, reference="mpesa-1")
    pending = w.sql("SELECT generation, reason FROM credit_allowances WHERE meter_id = %s "
                    "ORDER BY generation", (meter,))
    assert [r[1] for r in pending] == ["first", "credit"]

    # Two simulated days offline, then the link returns.
    wait_until(lambda: w.truth(meter)[-1].interval_end >= offline_from + 2 * DAY, 240,
               "two simulated days offline", w.logs)
    assert time.monotonic() - cut_at < 2 * DAY / SPEED + 60
    w.proxy.refuse(False)
    back_at = time.monotonic()

    def closed_by_unit() -> bool:
        return any(c[1] == "succeeded" for c in w.commands(meter, "relay_close", "unit"))
    wait_until(closed_by_unit, 60, "the unit to close the relay after reconnecting", w.logs)
    close_delay = time.monotonic() - back_at
    assert close_delay < 30, close_delay
    print(f"\nrelay opened offline at the reading ending {used_up.interval_end} (allowance "
          f"{allowance_wh} Wh from {anchor_end}); closed {close_delay:.1f} s after the link "
          "returned")
    # gridsim: consumption again after the relay closed.
    wait_until(lambda: not w.truth(meter)[-1].flags & Flags.RELAY_OPEN
               and w.truth(meter)[-1].interval_end > first_open.interval_end, 30,
               "readings with the relay closed", w.logs)

    # The unit's decisions reached the cloud as events (the closing one rides the unit's next
    # upload, which may come a moment after the command's result) and as its own commands.
    def credit_events() -> list[tuple[Any, ...]]:
        return w.sql("SELECT kind, detail FROM events WHERE meter_id = %s AND kind IN (%s, %s) "
                     "ORDER BY seq", (meter, int(AlarmKind.CREDIT_RELAY_OPENED),
                                      int(AlarmKind.CREDIT_RELAY_CLOSED)))
    wait_until(lambda: len(credit_events()) >= 2, 30, "the unit's credit events", w.logs)
    events = credit_events()
    assert [k for k, _ in events] == [AlarmKind.CREDIT_RELAY_OPENED,
                                      AlarmKind.CREDIT_RELAY_CLOSED], events
    assert f"generation={generation} " in events[0][1]
    assert f"at={used_up.interval_end} " in events[0][1]
    assert [c[1] for c in w.commands(meter, "relay_open", "unit")] == ["succeeded"]

    # The ledger is the truth: once the pipeline caught up, its energy is the meter's (the
    # register since the account's start), charged exactly at the tariff, and the balance is
    # the top-ups minus the charges.
    wait_until(lambda: w.backlog() == 0, 60, "the pipeline to catch up", w.logs)
    newest = w.newest(meter)
    (charged_wh, charged), = w.sql(
        "SELECT sum(energy_wh), sum(amount) FROM ledger WHERE meter_id = %s AND kind = 'energy'",
        (meter,))
    (register_delta,), = w.sql(
        "SELECT max(energy_wh) FILTER (WHERE interval_end = to_timestamp(%s)) - "
        "max(energy_wh) FILTER (WHERE interval_end = to_timestamp(%s)) FROM readings "
        "WHERE meter_id = %s", (newest, active_from, meter))
    assert int(charged_wh) == int(register_delta)
    stored = {r.interval_end: r.energy_wh for r in w.truth(meter) if r.interval_end <= newest}
    assert int(register_delta) == stored[newest] - stored[active_from]  # gridsim's own numbers
    assert -int(charged) == int(charged_wh) * PRICE // 1000
    account = w.api.get(f"/v1/meters/{meter}/account", w.key).json()
    topups = credit + 2 * day_wh * PRICE // 1000
    assert account["balance"] == topups + int(charged) > 0
    assert account["relay"] == "closed"
    # the meter's own state comes from its readings: the first with the relay closed may
    # still be on its way (the ledger above counts up to the newest processed one)
    wait_until(lambda: w.api.get(f"/v1/meters/{meter}", w.key).json()["relay"] == "closed", 30,
               "the meter's relay closed on the API", w.logs)
    # ... and the unit holds the ledger's newest allowance, anchored where the ledger is.
    (last_gen,), = w.sql("SELECT max(generation) FROM credit_allowances WHERE meter_id = %s",
                         (meter,))
    wait_until(lambda: any(c[1] == "succeeded" and f"generation {last_gen}:" in (c[2] or "")
                           for c in w.commands(meter, "set_allowance", "pipeline")), 30,
               "the newest allowance on the unit", w.logs)
