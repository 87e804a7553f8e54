"""A simulated fleet for the pipeline's tests and benchmark: edges, meters, tariffs, accounts,
and weeks of interval readings stored through the real ingest function (``ingest_batch()``).

Deterministic by seed.  Each meter's register grows by a load that follows the time of day;
voltage wanders around 230 V with rare excursions; a few intervals carry tamper/outage flags.

Tests: tests/pipeline/test_pipeline_correctness.py, tests/pipeline/test_pipeline_api.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2

INTERVAL = 900
#: A Monday, 00:00 UTC.
T0 = 1_763_942_400

INGEST_SQL = (
    "SELECT previous FROM ingest_batch(%s, %s, %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::bigint[], %s::integer[], %s::bigint[], %s::integer[], %s::integer[])"
)


def _array(values: list[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


@dataclass
class Fleet:
    """``edges`` edges of ``per_edge`` meters each; meter ids edge*1000 + n."""

    edges: int
    per_edge: int
    seed: int = 1
    #: each meter's register (Wh) and next journal seq per edge
    registers: dict[int, int] = field(default_factory=dict)
    next_seq: dict[str, int] = field(default_factory=dict)

    def edge_ids(self) -> list[str]:
        return [f"pe{e:03d}" for e in range(self.edges)]

    def meters_of(self, e: int) -> list[int]:
        return [(e + 1) * 1000 + n for n in range(self.per_edge)]

    def all_meters(self) -> list[int]:
        return [m for e in range(self.edges) for m in self.meters_of(e)]

    def setup(self, cur: Any, prepaid: bool = True, balance: int = 50_000) -> None:
        """Edges, a customer per meter, two tariffs (time-of-use) and accounts with a top-up."""
        for edge in self.edge_ids():
            cur.execute("INSERT INTO edges (edge_id) VALUES (%s) ON CONFLICT DO NOTHING", (edge,))
            self.next_seq[edge] = 1
        for m in self.all_meters():
            self.registers[m] = 10_000 + m % 997
        if not prepaid:
            return
        cur.execute("INSERT INTO tariffs (name) VALUES ('flat'), ('tou') RETURNING tariff_id")
        flat, tou = (r[0] for r in cur.fetchall())
        cur.execute("INSERT INTO tariff_versions VALUES (%s, to_timestamp(0), 30, '{0}', '{21}')",
                    (flat,))
        cur.execute("INSERT INTO tariff_versions VALUES (%s, to_timestamp(0), 45,"
                    " '{0,420,1080,1320}', '{12,25,37,25}')", (tou,))
        cur.execute(
            "INSERT INTO customers (name, reference) SELECT 'customer ' || m, 'c' || m"
            " FROM unnest(%s::bigint[]) m", (_array(self.all_meters()),))
        cur.execute(
            "INSERT INTO credit_accounts (meter_id, customer_id, tariff_id, active_from,"
            " low_balance)"
            " SELECT m, c.customer_id, CASE WHEN m %% 2 = 0 THEN %s ELSE %s END,"
            " to_timestamp(%s), 2000"
            " FROM unnest(%s::bigint[]) m JOIN customers c ON c.reference = 'c' || m",
            (flat, tou, T0, _array(self.all_meters())))
        cur.execute(
            "SELECT credit_topup(m, %s + (m %% 7) * 1000, 'initial-' || m)"
            " FROM unnest(%s::bigint[]) m", (balance, _array(self.all_meters())))

    def interval(self, e: int, k: int, rng: random.Random) -> list[tuple[int, ...]]:
        """The readings of edge ``e``'s meters for interval number ``k`` (ending T0 + k*900)."""
        end = T0 + (k + 1) * INTERVAL
        hour = (end // 3600) % 24
        base = 40 if 0 <= hour < 6 else 120 if 17 <= hour < 22 else 80
        rows = []
        for m in self.meters_of(e):
            wh = rng.randrange(base // 2, base * 2)
            self.registers[m] += wh
            volts = 2300 + rng.randrange(-60, 60)
            if rng.random() < 0.002:
                volts = 1800
            flags = 0
            if rng.random() < 0.001:
                flags |= 2
            if rng.random() < 0.001:
                flags |= 4
            rows.append((m, end, self.registers[m], wh * 4 + rng.randrange(50), volts,
                         wh * 17, 950, flags))
        return rows

    def ingest(self, cur: Any, edge: str, rows: list[tuple[int, ...]]) -> None:
        """Store ``rows`` as the edge's next journal records through ingest_batch()."""
        first = self.next_seq[edge]
        cols = list(zip(*rows, strict=True))
        cur.execute(INGEST_SQL, (edge, first, *(_array(list(c)) for c in cols)))
        self.next_seq[edge] = first + len(rows)

    def batches(self, intervals: int, per_batch: int = 4,
                seed: int | None = None) -> Iterator[tuple[str, list[tuple[int, ...]]]]:
        """(edge, rows) batches covering ``intervals`` intervals, edges interleaved."""
        rng = random.Random(self.seed if seed is None else seed)
        for k0 in range(0, intervals, per_batch):
            for e, edge in enumerate(self.edge_ids()):
                rows = []
                for k in range(k0, min(k0 + per_batch, intervals)):
                    rows.extend(self.interval(e, k, rng))
                yield edge, rows


def connect(dsn: str) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def drain(cur: Any, batch: int = 500, edges: int = 4) -> int:
    """Claim and process in this connection until nothing is left, recording failures as the
    service does (pipeline_failed, no backoff); the records processed."""
    total = 0
    while True:
        cur.execute("BEGIN")
        cur.execute("SELECT edge_id, from_seq, upto FROM pipeline_claim(%s, %s)", (edges, batch))
        claim = cur.fetchall()
        if not claim:
            cur.execute("COMMIT")
            return total
        columns = ([c[0] for c in claim], [c[1] for c in claim], [c[2] for c in claim])
        try:
            cur.execute("SELECT * FROM pipeline_process(%s, %s, %s, 1955, 2530)", columns)
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK")
            cur.execute("SELECT pipeline_failed(%s, %s, %s, %s, 3, 0)",
                        (*columns, f"{exc.pgcode}: {str(exc).splitlines()[0]}"))
            continue
        total += cur.fetchone()[0]
        cur.execute("COMMIT")


# -- recomputation from scratch (what the pipeline's results must equal) ---------------------

DELTAS = """
SELECT r.*, CASE WHEN p IS NULL THEN 0 WHEN energy_wh >= p THEN energy_wh - p
                 ELSE energy_wh END AS dwh
  FROM (SELECT r.*, lag(energy_wh) OVER (PARTITION BY meter_id ORDER BY interval_end) AS p
          FROM readings r
         WHERE NOT EXISTS (SELECT 1 FROM pipeline_dead_letters d
                            WHERE d.edge_id = r.edge_id AND d.seq = r.seq)) r
"""

AGGREGATE_MISMATCHES = f"""
WITH d AS ({DELTAS}), h AS (
    SELECT meter_id, edge_id, dwh, max_demand_w,
           date_trunc('hour', interval_end - interval '1 microsecond') AS hour FROM d
), coincident AS (
    -- per edge and interval: the sum of its meters' demand (the edge's peak is the largest)
    SELECT edge_id, hour, date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           sum(max_demand_w) AS demand
      FROM (SELECT edge_id, interval_end, max_demand_w,
                   date_trunc('hour', interval_end - interval '1 microsecond') AS hour FROM d) i
     GROUP BY edge_id, interval_end, hour
), want AS (
    SELECT 'm' AS scope, meter_id::text AS id, 'hour' AS period, hour AS start,
           sum(dwh)::bigint AS e, max(max_demand_w) AS p, count(*)::int AS n
      FROM h GROUP BY meter_id, hour
    UNION ALL
    SELECT 'm', meter_id::text, 'day', date_trunc('day', hour AT TIME ZONE 'UTC')
           AT TIME ZONE 'UTC', sum(dwh), max(max_demand_w), count(*)
      FROM h GROUP BY 2, 4
    UNION ALL
    SELECT 'e', h.edge_id, 'hour', h.hour, sum(dwh), min(c.p), count(*)
      FROM h JOIN (SELECT edge_id, hour, max(demand) AS p FROM coincident GROUP BY 1, 2) c
           USING (edge_id, hour)
     GROUP BY h.edge_id, h.hour
    UNION ALL
    SELECT 'e', h.edge_id, 'day', c.day, sum(dwh), min(c.p), count(*)
      FROM h JOIN (SELECT edge_id, day, max(demand) AS p FROM coincident GROUP BY 1, 2) c
           ON c.edge_id = h.edge_id
          AND c.day = date_trunc('day', h.hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
     GROUP BY h.edge_id, c.day
), have AS (
    SELECT 'm' AS scope, meter_id::text AS id, period, start, energy_wh AS e,
           peak_demand_w AS p, readings AS n FROM energy_meter
    UNION ALL
    SELECT 'e', edge_id, period, start, energy_wh, peak_demand_w, readings FROM energy_edge
)
SELECT w.*, h.* FROM want w FULL JOIN have h USING (scope, id, period, start)
 WHERE (w.e, w.p, w.n) IS DISTINCT FROM (h.e, h.p, h.n)
"""

CREDIT_MISMATCHES = f"""
WITH d AS ({DELTAS}), priced AS (
    SELECT a.meter_id, d.dwh, d.interval_end, t.timezone,
           tariff_band_price(v.band_start, v.band_price, t.timezone, d.interval_end) AS price
      FROM d JOIN credit_accounts a ON a.meter_id = d.meter_id AND d.interval_end > a.active_from
      JOIN tariffs t ON t.tariff_id = a.tariff_id
      CROSS JOIN LATERAL (SELECT band_start, band_price FROM tariff_versions tv
                           WHERE tv.tariff_id = a.tariff_id AND tv.valid_from < d.interval_end
                           ORDER BY valid_from DESC LIMIT 1) v
), energy AS (
    SELECT meter_id, floor(sum(dwh * price::numeric) / 1000)::bigint AS charged,
           min(timezone) AS tz,
           max(((interval_end - interval '1 microsecond') AT TIME ZONE timezone)::date) AS last_day
      FROM priced GROUP BY meter_id
), standing AS (
    SELECT a.meter_id, coalesce(sum((SELECT tv.standing_charge FROM tariff_versions tv
                               WHERE tv.tariff_id = a.tariff_id
                                 AND tv.valid_from <= (day::timestamp AT TIME ZONE e.tz)
                               ORDER BY tv.valid_from DESC LIMIT 1)), 0)::bigint AS charged
      FROM credit_accounts a JOIN energy e USING (meter_id)
      LEFT JOIN LATERAL generate_series((a.active_from AT TIME ZONE e.tz)::date::timestamp,
                                        e.last_day::timestamp, interval '1 day') day ON true
     GROUP BY a.meter_id
), topped AS (
    SELECT meter_id, sum(amount)::bigint AS amount FROM topups GROUP BY meter_id
), want AS (
    SELECT a.meter_id, coalesce(t.amount, 0) - coalesce(e.charged, 0)
                       - coalesce(s.charged, 0) AS balance,
           coalesce(e.charged, 0) AS energy
      FROM credit_accounts a LEFT JOIN energy e USING (meter_id)
      LEFT JOIN standing s USING (meter_id) LEFT JOIN topped t USING (meter_id)
), ledger_sums AS (
    SELECT meter_id, sum(amount)::bigint AS balance,
           -coalesce(sum(amount) FILTER (WHERE kind = 'energy'), 0)::bigint AS energy
      FROM ledger GROUP BY meter_id
)
SELECT w.meter_id, w.balance, w.energy, a.balance, l.balance, l.energy
  FROM want w JOIN credit_accounts a USING (meter_id) LEFT JOIN ledger_sums l USING (meter_id)
 WHERE (w.balance, w.energy) IS DISTINCT FROM (a.balance, l.energy)
    OR a.balance IS DISTINCT FROM l.balance
"""

RELAY_MISMATCHES = """
SELECT a.meter_id, a.balance, a.relay,
       (SELECT desired FROM relay_requests r WHERE r.meter_id = a.meter_id
         ORDER BY request_id DESC LIMIT 1) AS last_request
  FROM credit_accounts a
 WHERE (a.balance <= 0) <> (a.relay = 'open')
    OR a.relay IS DISTINCT FROM coalesce((SELECT desired FROM relay_requests r
                                           WHERE r.meter_id = a.meter_id
                                           ORDER BY request_id DESC LIMIT 1), 'closed')
"""


def backlog(cur: Any) -> int:
    """Journal records ingest has committed that the pipeline has not processed yet."""
    cur.execute("SELECT coalesce(sum(e.last_seq - p.done_seq), 0) FROM edges e"
                " JOIN pipeline_progress p USING (edge_id)")
    return int(cur.fetchone()[0])
