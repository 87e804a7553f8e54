"""The allowances the pipeline sends to prepaid meters' units (migration 0012), on the real
PostgreSQL through the real ingest and pipeline functions: when one is sent (and when not: the
link is metered), what it holds (Wh that take the ledger's balance exactly to zero at a flat
tariff), its payload on the wire, superseding, tariff versions, and the reconciliation of a
unit's own relay decision with the ledger."""

from __future__ import annotations

from typing import Any

import pytest
from gridcloud import migrations
from gridcloud.commands import command_payload
from gridwire import Allowance

from support.pipeline_data import INTERVAL, T0, Fleet, connect, drain

EDGE = "pe000"
METER = 1000


@pytest.fixture
def db(module_dsn: str) -> Any:
    migrations.migrate(module_dsn)
    conn = connect(module_dsn)
    cur = conn.cursor()
    cur.execute("TRUNCATE edges, readings, events, meters, pipeline_progress, meter_state,"
                " energy_meter, energy_edge, edge_demand, customers, tariffs, tariff_versions,"
                " credit_accounts, topups, ledger, relay_requests, alarms, commands,"
                " pipeline_dead_letters, feed_log, dead_letters, credit_allowances CASCADE")
    yield cur
    conn.close()


class Meter:
    """One prepaid meter on edge pe000 at a flat tariff (``price`` per kWh, no standing
    charge unless given), readings through ingest_batch(), the pipeline drained in-process."""

    def __init__(self, cur: Any, *, price: int = 21, standing: int = 0, balance: int = 1000):
        self.cur = cur
        self.fleet = Fleet(edges=1, per_edge=1)
        self.fleet.setup(cur, prepaid=False)
        self.register = 50_000
        self.k = 0
        cur.execute("INSERT INTO tariffs (name) VALUES ('flat') RETURNING tariff_id")
        (self.tariff,), = cur.fetchall()
        cur.execute("INSERT INTO tariff_versions VALUES (%s, to_timestamp(0), %s, '{0}', %s)",
                    (self.tariff, standing, f"{{{price}}}"))
        cur.execute("INSERT INTO customers (name, reference) VALUES ('c', 'c') "
                    "RETURNING customer_id")
        (customer,), = cur.fetchall()
        cur.execute("INSERT INTO credit_accounts (meter_id, customer_id, tariff_id, active_from)"
                    " VALUES (%s, %s, %s, to_timestamp(%s))", (METER, customer, self.tariff, T0))
        self.topup(balance, "initial")

    def topup(self, amount: int, reference: str) -> None:
        self.cur.execute("SELECT credit_topup(%s, %s, %s)", (METER, amount, reference))

    def read(self, *wh: int) -> None:
        """Readings using ``wh`` Wh each (one per interval), processed by the pipeline."""
        rows = []
        for used in wh:
            self.k += 1
            self.register += used
            rows.append((METER, T0 + self.k * INTERVAL, self.register, used * 4, 2300, 1000,
                         950, 0))
        self.fleet.ingest(self.cur, EDGE, rows)
        drain(self.cur)

    def allowances(self) -> list[dict[str, Any]]:
        self.cur.execute("SELECT row_to_json(a) FROM credit_allowances a WHERE meter_id = %s "
                         "ORDER BY generation", (METER,))
        return [r[0] for r in self.cur.fetchall()]

    def balance(self) -> int:
        self.cur.execute("SELECT balance FROM credit_accounts WHERE meter_id = %s", (METER,))
        (b,), = self.cur.fetchall()
        return int(b)

    def command(self, command_id: int) -> tuple[str, str, Allowance | None, str | None]:
        self.cur.execute("SELECT action, state, params::text, reason FROM commands WHERE id = %s",
                         (command_id,))
        (action, state, params, reason), = self.cur.fetchall()
        return action, state, Allowance.decode(command_payload(action, params)), reason


def test_first_allowance_takes_the_balance_exactly_to_zero(db: Any) -> None:
    """No anchor before the first processed reading; then one allowance, on the commands path,
    whose Wh are exactly what takes the ledger's balance to zero; readings that use less than
    half the balance send nothing more (the link is metered)."""
    m = Meter(db, price=21, balance=1000)
    assert m.allowances() == []  # a top-up with no processed reading: nothing to anchor to
    m.read(0)
    (first,) = m.allowances()
    assert first["reason"] == "first" and first["balance"] == 1000 and first["reserve"] == 0
    assert first["allowance_wh"] == 47_620  # ceil(1000 * 1000 / 21)
    action, state, payload, _ = m.command(first["command_id"])
    assert action == "set_allowance" and state == "queued" and payload is not None
    assert payload.generation == first["generation"] and payload.allowance_wh == 47_620
    assert payload.anchor_end == T0 + INTERVAL and payload.anchor_wh == 50_000
    params = ('{"generation": %s, "allowance_wh": 47620, "anchor_end": 1, "anchor_wh": 2, '
              '"valid_until": 3}').replace("%s", str(first["generation"]))
    assert len(command_payload("set_allowance", params)) < 24

    m.read(10_000, 10_000, 3_000)  # 23,000 Wh: the balance stays above half
    assert len(m.allowances()) == 1
    m.read(47_620 - 23_000 - 1)  # one Wh short of the allowance: still credit
    assert m.balance() > 0
    assert [a["reason"] for a in m.allowances()] == ["first", "half"]
    m.read(1)  # the allowance's last Wh: the ledger reaches zero at the same reading
    assert m.balance() <= 0


def test_topup_supersedes_a_queued_allowance_and_tariff_versions_send_new_ones(db: Any) -> None:
    m = Meter(db, price=30, standing=10, balance=500)
    m.read(0)
    (first,) = m.allowances()
    assert first["reserve"] == 30  # three days of standing charge held back (72 h validity)
    assert first["balance"] == 490  # the first day's standing charge
    assert first["allowance_wh"] == (1000 * (490 - 30) + 29) // 30
    m.topup(2000, "pos-1")
    _, second = m.allowances()
    assert second["reason"] == "credit" and second["balance"] == 2490
    _, state, _, reason = m.command(first["command_id"])
    assert state == "expired" and reason is not None and "superseded" in reason
    assert m.command(second["command_id"])[1] == "queued"
    # a new version (a higher price from tomorrow): a new allowance, valid until it starts
    db.execute("INSERT INTO tariff_versions VALUES (%s, now() + interval '1 day', 10, '{0}',"
               " '{60}')", (m.tariff,))
    third = m.allowances()[-1]
    assert third["reason"] == "tariff"
    db.execute("SELECT extract(epoch FROM %s::timestamptz - now())", (third["valid_until"],))
    (left,), = db.fetchall()
    assert 86_000 < float(left) <= 86_400


def test_unit_opened_with_credit_in_the_ledger_gets_a_new_allowance(db: Any) -> None:
    """The unit reports CREDIT_RELAY_OPENED (0x8007) for the newest allowance at a reading the
    ledger has processed, and the ledger shows credit: the ledger wins, a new allowance goes
    out at once.  At a reading not processed yet, it waits for the pipeline's batch."""
    m = Meter(db, price=21, balance=1000)
    m.read(0, 100)
    (first,) = m.allowances()
    db.execute("SELECT ingest_event(%s, %s, %s, extract(epoch FROM now())::bigint, 32775, %s)",
               (EDGE, m.fleet.next_seq[EDGE], METER,
                f"generation={first['generation']} allowance_wh=1 used_wh=1 "
                f"at={T0 + 5 * INTERVAL} valid_until=0"))
    m.fleet.next_seq[EDGE] += 1
    assert len(m.allowances()) == 1  # the reading at T0+5*900 is not in the ledger yet
    m.read(100, 100, 100)
    assert [a["reason"] for a in m.allowances()] == ["first", "unit_opened"]
    assert m.allowances()[0]["unit_opened_at"] is not None


def test_edge_peak_is_the_coincident_peak(db: Any) -> None:
    """Two meters on one edge peak in different intervals: the edge's peak is the largest sum
    of their demand in one interval, not the sum (nor the larger) of their own peaks; a late
    reading adds to its own interval's sum."""
    fleet = Fleet(edges=1, per_edge=2)
    fleet.setup(db, prepaid=False)
    a, b = fleet.meters_of(0)

    def row(meter: int, k: int, demand: int) -> tuple[int, ...]:
        return (meter, T0 + k * INTERVAL, 10_000 + k * 100, demand, 2300, 1000, 950, 0)

    # interval 1: a 5000 W, b 1000 W; interval 2: a 1000, b 4000; interval 3: a 3000 (late), b 3500
    fleet.ingest(db, EDGE, [row(a, 1, 5000), row(b, 1, 1000), row(a, 2, 1000), row(b, 2, 4000),
                            row(b, 3, 3500)])
    drain(db)
    db.execute("SELECT period, peak_demand_w FROM energy_edge WHERE edge_id = %s "
               "ORDER BY period", (EDGE,))
    assert db.fetchall() == [("day", 6000), ("hour", 6000)]  # not 9000, not 5000
    fleet.ingest(db, EDGE, [row(a, 3, 3000)])  # late: interval 3 now sums to 6500
    drain(db)
    db.execute("SELECT period, peak_demand_w FROM energy_edge WHERE edge_id = %s "
               "ORDER BY period", (EDGE,))
    assert db.fetchall() == [("day", 6500), ("hour", 6500)]
    db.execute("SELECT period, peak_demand_w FROM energy_meter WHERE meter_id = %s "
               "ORDER BY period", (a,))
    assert db.fetchall() == [("day", 5000), ("hour", 5000)]
