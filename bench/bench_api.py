#!/usr/bin/env python3
"""make bench-api: the HTTP API's latency and CSV export speed beside the same SQL run directly.

Run under ``tools/pgcluster.py run`` (GRIDEDGE_PG_DSN names a throwaway cluster).

1. Data: 5,000 meters on 5 edges, 15-minute readings for 3 weeks (10 million rows),
   generated straight into PostgreSQL (``INSERT ... SELECT generate_series``) into the
   daily partitions, with the edges' and meters' rows as ingest leaves them; ANALYZE.
2. ``gridcloud api`` runs as its own process (pool of 4).  Each scenario is driven open
   loop at ``--rate`` requests/s for ``--duration`` seconds by a Twisted client with
   persistent connections, after 20 unmeasured requests; latency is from sending to
   the last body byte.
   - meter-day: ``GET /v1/meters/{m}/readings?from=D&to=D+1`` (random meter and day; 96 rows)
   - edge-list: ``GET /v1/edges``
3. The same statements (the API's own SQL, from gridcloud.api.resources) run directly
   over psycopg2 at the same rate: the ratio API/SQL compares p50 and p99.
4. CSV: a one-day export of one edge (``Accept: text/csv``, 96,000 rows) against the
   same statement read directly through a server-side cursor; rows per second.

Targets: p99 < 50 ms for meter-day and edge-list; API p50 at most 2x the SQL p50;
CSV export at least 100,000 rows/s.  Prints a table and, as the very last line, one
JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
P99_TARGET_MS = 50.0
RATIO_TARGET = 2.0
CSV_TARGET = 100_000
METERS_PER_EDGE = 1000
INTERVALS_PER_DAY = 96


def fresh_database(admin_dsn: str, name: str) -> str:
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    admin.close()
    return " ".join([p for p in admin_dsn.split() if not p.startswith("dbname=")]
                    + [f"dbname={name}"])


def generate(dsn: str, meters: int, days: int) -> datetime.date:
    """Readings of ``meters`` meters for the ``days`` days before today; the first day."""
    from gridcloud import migrations

    migrations.migrate(dsn)
    today = datetime.datetime.now(datetime.UTC).date()
    first = today - datetime.timedelta(days=days)
    edges = max(1, meters // METERS_PER_EDGE)
    per_edge = meters // edges
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT create_readings_partitions(1, %s)", (days + 1,))
        for e in range(edges):
            cur.execute("INSERT INTO edges (edge_id, last_connected_at, last_peer,"
                        " firmware_version, boot_slot) VALUES (%s, now(), '192.0.2.1:1',"
                        " '1.0.0', 'A')", (f"bench-e{e}",))
        for d in range(days):
            day = first + datetime.timedelta(days=d)
            # seq is interval-major per edge, as the edge's journal numbers them
            cur.execute("""
                INSERT INTO readings (edge_id, seq, meter_id, interval_end, energy_wh,
                                      max_demand_w, voltage_dv, current_ma, power_factor, flags)
                SELECT 'bench-e' || (m / %(per)s),
                       ((%(d)s * 96 + i) * %(per)s + m %% %(per)s) + 1,
                       m + 1, %(day)s::date + (i + 1) * interval '15 minutes',
                       (%(d)s * 96 + i) * 40 + m, 400, 2300 + m %% 50, 1500, 950, 0
                  FROM generate_series(0, 95) AS i, generate_series(0, %(meters)s - 1) AS m
            """, {"per": per_edge, "d": d, "day": day, "meters": edges * per_edge})
            print(f"  generated day {d + 1}/{days}", file=sys.stderr, flush=True)
        cur.execute("""
            INSERT INTO meters (meter_id, edge_id, last_interval_end, energy_wh, max_demand_w,
                                voltage_dv, current_ma, power_factor, flags)
            SELECT m + 1, 'bench-e' || (m / %(per)s), %(last)s, 0, 400, 2300, 1500, 950, 0
              FROM generate_series(0, %(meters)s - 1) AS m
        """, {"per": per_edge, "meters": edges * per_edge,
              "last": datetime.datetime.combine(today, datetime.time(), datetime.UTC)})
        cur.execute("UPDATE edges SET readings_total = %s, last_seq = %s",
                    (per_edge * days * 96, per_edge * days * 96))
        cur.execute("ANALYZE")
    conn.close()
    return first


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(s),
            "p99_ms": 1000 * s[min(len(s) - 1, int(len(s) * 0.99))]}


def direct_sql(dsn: str, statements: list[tuple[str, dict[str, Any]]], rate: float,
               duration: float) -> dict[str, float]:
    """Latency of running ``statements`` (cycled) directly at ``rate`` per second."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    samples = []
    start = time.monotonic()
    n = 0
    with conn.cursor() as cur:
        while time.monotonic() - start < duration:
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # open loop: the next query is due then
            sql, args = statements[n % len(statements)]
            t = time.monotonic()
            cur.execute(sql, args)
            cur.fetchall()
            samples.append(time.monotonic() - t)
            n += 1
    conn.close()
    return {**percentiles(samples), "rps": n / (time.monotonic() - start)}


def direct_csv(dsn: str, sql: str, args: dict[str, Any]) -> dict[str, float]:
    conn = psycopg2.connect(dsn)
    t = time.monotonic()
    rows = 0
    with conn, conn.cursor(name="bench_export") as cur:
        cur.itersize = 5000
        cur.execute(sql, args)
        for _ in cur:
            rows += 1
    seconds = time.monotonic() - t
    conn.close()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def start_api(dsn: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = log.with_suffix(".toml")
    config.write_text('[api]\nlisten = "tcp:0:interface=127.0.0.1"\n'
                      "rate_limit = 100000.0\nrate_burst = 100000\n")
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gridcloud.cli", "api", "--config",
                             str(config), "--dsn", dsn], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.findall(r"listening on .*port=(\d+)", log.read_text())
        if found:
            return proc, f"http://127.0.0.1:{found[-1]}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # polling the log for the port
    sys.exit("bench-api: gridcloud api did not start:\n" + log.read_text())


def http_phases(url: str, key: str, paths: dict[str, list[str]], csv_path: str, rate: float,
                duration: float) -> dict[str, Any]:
    """Run the HTTP scenarios in a Twisted reactor; their latencies and the CSV rate."""
    import warnings

    from twisted.internet import defer, task
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers

    results: dict[str, Any] = {}
    # our Agent's transports are plain TCP; readBody's warning about them does not apply
    warnings.filterwarnings("ignore", "Using readBody", DeprecationWarning)

    async def main(reactor: Any) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        agent = Agent(reactor, pool=pool)
        auth = {b"authorization": [f"Bearer {key}".encode()]}

        async def one(path: str, samples: list[float], errors: list[int]) -> None:
            t = time.monotonic()
            response = await agent.request(b"GET", (url + path).encode(), Headers(auth))
            await readBody(response)
            samples.append(time.monotonic() - t)
            if response.code != 200:
                errors.append(response.code)

        for name, urls in paths.items():
            for path in urls[:20]:  # warm-up, not measured: connections, caches
                await one(path, [], [])
            samples: list[float] = []
            errors: list[int] = []
            pending = []
            count = int(rate * duration)
            start = time.monotonic()
            for n in range(count):
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await task.deferLater(reactor, delay, lambda: None)
                pending.append(defer.ensureDeferred(one(urls[n % len(urls)], samples, errors)))
            await defer.gatherResults(pending)
            elapsed = time.monotonic() - start
            results[name] = {**percentiles(samples), "rps": count / elapsed,
                             "errors": len(errors)}
        t = time.monotonic()
        response = await agent.request(b"GET", (url + csv_path).encode(),
                                       Headers({**auth, b"accept": [b"text/csv"]}))
        body = await readBody(response)
        seconds = time.monotonic() - t
        rows = body.count(b"\n") - 1
        results["csv"] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
        await pool.closeCachedConnections()

    from twisted.internet import reactor

    failures: list[Any] = []
    done = defer.ensureDeferred(main(reactor))
    done.addErrback(failures.append)
    done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        failures[0].raiseException()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gridcloud.api import keys
    from gridcloud.api.resources import edges, readings

    admin = os.environ.get("GRIDEDGE_PG_DSN")
    if not admin:
        sys.exit("bench-api: run me under tools/pgcluster.py run (GRIDEDGE_PG_DSN)")
    dsn = fresh_database(admin, "bench_api")
    print(f"generating {args.meters} meters x {args.days} days of readings ...", file=sys.stderr)
    t = time.monotonic()
    first = generate(dsn, args.meters, args.days)
    generated = time.monotonic() - t
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM readings")
        total = int(cur.fetchone()[0])
    conn.close()
    key = keys.create_key(dsn, "bench", ["read"])

    rng = random.Random(7)
    meter_days = []
    meter_sql = []
    for _ in range(200):
        meter = rng.randrange(1, args.meters + 1)
        day = first + datetime.timedelta(days=rng.randrange(args.days))
        lo = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
        hi = lo + datetime.timedelta(days=1)
        meter_days.append(f"/v1/meters/{meter}/readings?from={lo:%Y-%m-%dT%H:%M:%SZ}"
                          f"&to={hi:%Y-%m-%dT%H:%M:%SZ}")
        meter_sql.append((readings.METER_PAGE_SQL, {
            "meter_id": meter, "edges": None, "from": lo, "to": hi, "t": None, "e": None,
            "s": None, "limit": 101}))
    edge_sql = [(edges.LIST_SQL, {"edges": None, "after": None, "limit": 101})]
    day = first + datetime.timedelta(days=args.days // 2)
    lo = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    hi = lo + datetime.timedelta(days=1)
    csv_path = (f"/v1/edges/bench-e0/readings?from={lo:%Y-%m-%dT%H:%M:%SZ}"
                f"&to={hi:%Y-%m-%dT%H:%M:%SZ}")
    csv_args = {"edge_id": "bench-e0", "edges": None, "from": lo, "to": hi}

    sql = {
        "meter-day": direct_sql(dsn, meter_sql, args.rate, args.duration),
        "edge-list": direct_sql(dsn, edge_sql, args.rate, args.duration),
        "csv": direct_csv(dsn, readings.EDGE_CSV_SQL, csv_args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_api(dsn, Path(tmp) / "api.log")
        try:
            api = http_phases(url, key, {"meter-day": meter_days, "edge-list": ["/v1/edges"]},
                              csv_path, args.rate, args.duration)
        finally:
            proc.terminate()
            proc.wait(30)
    return {"rows": total, "generate_s": generated, "sql": sql, "api": api}


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    api, sql = r["api"], r["sql"]
    print(f"\nbench-api: {r['rows']:,} readings ({args.meters} meters, {args.days} days; "
          f"generated in {r['generate_s']:.0f} s), {args.rate:g} requests/s for "
          f"{args.duration:g} s\n")
    print(f"{'scenario':<12} {'API p50':>9} {'API p99':>9} {'SQL p50':>9} {'SQL p99':>9} "
          f"{'ratio p50':>9} {'API req/s':>9} {'errors':>6}")
    out: dict[str, Any] = {"bench": "api", "rows": r["rows"], "rate": args.rate}
    ok = True
    for name in ("meter-day", "edge-list"):
        a, s = api[name], sql[name]
        ratio = a["p50_ms"] / s["p50_ms"]
        print(f"{name:<12} {a['p50_ms']:>7.1f}ms {a['p99_ms']:>7.1f}ms {s['p50_ms']:>7.2f}ms "
              f"{s['p99_ms']:>7.2f}ms {ratio:>9.1f} {a['rps']:>9.1f} {a['errors']:>6}")
        key = name.replace("-", "_")
        out[key] = {"api_p50_ms": round(a["p50_ms"], 2), "api_p99_ms": round(a["p99_ms"], 2),
                    "sql_p50_ms": round(s["p50_ms"], 3), "sql_p99_ms": round(s["p99_ms"], 3),
                    "ratio_p50": round(ratio, 2), "rps": round(a["rps"], 1),
                    "errors": a["errors"]}
        ok = ok and a["p99_ms"] < P99_TARGET_MS and ratio <= RATIO_TARGET and not a["errors"]
    c, d = api["csv"], sql["csv"]
    print(f"\ncsv export of one edge-day: API {c['rows']:,} rows in {c['seconds']:.2f} s = "
          f"{c['rows_per_s']:,.0f} rows/s; direct SQL {d['rows_per_s']:,.0f} rows/s "
          f"(ratio {d['rows_per_s'] / c['rows_per_s']:.1f}x)")
    out["csv"] = {"rows": c["rows"], "api_rows_per_s": round(c["rows_per_s"]),
                  "sql_rows_per_s": round(d["rows_per_s"])}
    ok = ok and c["rows_per_s"] >= CSV_TARGET
    out["targets"] = {"p99_ms": P99_TARGET_MS, "ratio_p50": RATIO_TARGET,
                      "csv_rows_per_s": CSV_TARGET, "met": ok}
    print(f"\ntargets: p99 < {P99_TARGET_MS:g} ms, API p50 <= {RATIO_TARGET:g}x SQL, "
          f"CSV >= {CSV_TARGET:,} rows/s: {'met' if ok else 'NOT met'}")
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=5000)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    args = parser.parse_args()
    report(run(args), args)


if __name__ == "__main__":
    main()
