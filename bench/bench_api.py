#!/usr/bin/env python3
"""make bench-api: the HTTP API's latency and CSV export speed beside the same SQL run directly.

Run under ``tools/pgcluster.py run`` (GRIDEDGE_PG_DSN names a throwaway cluster).

1. Data: 5,000 meters on 5 edges, 15-minute readings for 3 weeks (10 million rows),
   generated straight into PostgreSQL (``INSERT ... SELECT generate_series``) into the
   daily partitions, with the edges' and meters' rows as ingest leaves them; ANALYZE.
2. ``gridcloud api`` runs as its own process (pool of 4).  Each scenario is driven open
   loop at ``--rate`` requests/s for ``--duration`` seconds, after 20 unmeasured requests,
   by a lean HTTP/1.1 client in the reactor (bench/http_client.py: request bytes formatted
   before the clock runs, four keep-alive connections per side opened ahead and more when
   all are busy, status and whole body checked); latency is from sending to the last body
   byte.  Not twisted.web's ``Agent`` + ``readBody``: their own Python per request was
   about a millisecond here, counted against every HTTP side and not against the SQL.
   - meter-day: ``GET /v1/meters/{m}/readings?from=D&to=D+1`` (random meter and day; 96 rows)
   - edge-list: ``GET /v1/edges``
3. The same statements (the API's own SQL, from gridcloud.api.resources) run directly,
   from the same client process, reactor and open-loop driver as the HTTP requests, over
   a txpostgres connection as the API makes them: both sides pay the same client costs
   (a reactor turn, an asynchronous psycopg2 round trip, fetching the rows), so the ratio
   API/SQL is what the HTTP layer adds.  The same statements over blocking psycopg2 (no
   reactor) are shown beside them for reference.
4. CSV: a one-day export of one edge (``Accept: text/csv``, 96,000 rows) against the
   same statement read directly through a server-side cursor; rows per second.
5. Two floors, each in its own process like the API, answering every GET at once with the
   API's own answer to that scenario (fetched from it before the measurements; no key, no
   parameters, no database): "web", a bare twisted.web resource (no Klein), and "klein", a
   bare Klein app.  They are what an HTTP round trip costs this client and server with
   twisted.web alone and with Klein on top; API minus Klein floor minus SQL is what the
   API's own code adds.  When the twisted.web floor alone is above 2x the SQL, no API served by
   twisted.web can meet the ratio target in that run: the report says so.  Per scenario it
   also prints ``own_ms`` (API - Klein floor - SQL) beside ``own_budget_ms`` (what 2x leaves
   the API's own code: SQL - Klein floor).
6. ``--baseline DIR`` (a checkout of another revision, e.g. ``git worktree add
   /tmp/base main``) runs that revision's ``gridcloud api`` in the same run, beside this
   one: the scenarios alternate between the two (and the direct SQL) in ``--rounds``
   short rounds, so a busy machine slows both alike.  A baseline that does not know a
   migration of this tree is started while that migration's row is hidden from
   ``schema_migrations`` (its check runs only at start; the extra tables do not matter).

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
#: the floors' side names: a bare twisted.web resource, a bare Klein app
FLOORS = ("web", "klein")
METERS_PER_EDGE = 1000
INTERVALS_PER_DAY = 96
#: persistent connections opened ahead to each HTTP side, and the SQL side's pool size
CONNECTIONS = 4


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


def blocking_sql(dsn: str, statements: list[tuple[str, dict[str, Any]]], rate: float,
                 duration: float) -> dict[str, float]:
    """Latency of running ``statements`` (cycled) over blocking psycopg2 at ``rate`` per s."""
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


def start_api(
    dsn: str, log: Path, source: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``gridcloud api`` (of ``source``, a checkout, if given; else this tree's)."""
    config = log.with_suffix(".toml")
    config.write_text('[api]\nlisten = "tcp:0:interface=127.0.0.1"\n'
                      "rate_limit = 100000.0\nrate_burst = 100000\n")
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            str(p) for p in sorted((source / "apps").glob("*/src")))
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gridcloud.cli", "api", "--config",
                             str(config), "--dsn", dsn], stdout=out, stderr=subprocess.STDOUT,
                            env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.findall(r"listening on .*port=(\d+)", log.read_text())
        if found:
            return proc, f"http://127.0.0.1:{found[-1]}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # polling the log for the port
    sys.exit("bench-api: gridcloud api did not start:\n" + log.read_text())


def floor_server(kind: str, bodies_dir: Path) -> None:
    """``--floor-server web|klein DIR``: a floor (see the module docstring) answering with the
    bodies in DIR (``meters.json``, ``edges.json``), until killed."""
    from twisted.internet import endpoints, reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    bodies = {name: (bodies_dir / f"{name}.json").read_bytes() for name in ("meters", "edges")}

    def answer(request: Any, rest: str) -> bytes:
        body = bodies["meters" if rest.startswith("meters") else "edges"]
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    if kind == "klein":
        from klein import Klein

        app = Klein()
        app.route("/v1/<path:rest>", methods=["GET"])(answer)
        root: Any = app.resource()  # type: ignore[no-untyped-call]
    else:
        class Bare(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return answer(request, request.path.decode()[len("/v1/"):])

        root = Bare()
    site = Site(root)  # type: ignore[no-untyped-call]
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    def listening(port: Any) -> None:
        print(f"floor listening on port={port.getHost().port}", flush=True)

    endpoint.listen(site).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


def api_bodies(url: str, key: str, paths: dict[str, str], folder: Path) -> Path:
    """The API's own answers to one request of each scenario, for the floors to send."""
    import urllib.request

    for name, path in paths.items():
        request = urllib.request.Request(url + path, headers={"authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            (folder / f"{name}.json").write_bytes(response.read())
    return folder


def start_floor(log: Path, kind: str, bodies: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, __file__, "--floor-server", kind, str(bodies)],
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.findall(r"floor listening on port=(\d+)", log.read_text())
        if found:
            return proc, f"http://127.0.0.1:{found[-1]}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # polling the log for the port
    sys.exit("bench-api: the floor server did not start:\n" + log.read_text())


def start_baseline(dsn: str, log: Path, source: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the baseline's API, hiding the migrations it does not know while it checks."""
    known = {int(p.name[:4]) for p in
             (source / "apps/cloud/src/gridcloud/migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")}
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT version, name, sha256, applied_at FROM schema_migrations"
                    " WHERE NOT version = ANY(%s)", (sorted(known),))
        hidden = cur.fetchall()
        cur.execute("DELETE FROM schema_migrations WHERE NOT version = ANY(%s)", (sorted(known),))
    try:
        return start_api(dsn, log, source)
    finally:
        with conn.cursor() as cur:
            for row in hidden:
                cur.execute("INSERT INTO schema_migrations (version, name, sha256, applied_at)"
                            " VALUES (%s, %s, %s, %s)", row)
        conn.close()


def client_phases(dsn: str, key: str, apis: dict[str, str], scenarios: dict[str, Any],
                  csv_path: str, rate: float, duration: float, rounds: int) -> dict[str, Any]:
    """In one Twisted reactor: every scenario against every API and direct SQL, alternating
    in ``rounds`` rounds; then the CSV export of each API.  Latencies and CSV rates."""
    from urllib.parse import urlsplit

    from http_client import ConnectionPool, get_request
    from twisted.internet import defer, task
    from txpostgres import txpostgres

    results: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        pool = ConnectionPool(reactor)
        auth = {"Authorization": f"Bearer {key}"}
        sql = txpostgres.ConnectionPool(None, dsn, min=CONNECTIONS)
        await sql.start()
        where = {side: urlsplit(url) for side, url in apis.items()}
        for address in where.values():
            await pool.open(address.hostname, address.port, CONNECTIONS)

        def http(side: str) -> Any:
            host, port = where[side].hostname, where[side].port

            def one(request: bytes) -> Any:
                return pool.get(host, port, request).addCallback(lambda answer: answer[0] == 200)
            return one

        def requests(side: str, paths: list[str]) -> list[bytes]:
            """The scenario's requests to ``side``, formatted before the clock runs."""
            return [get_request(where[side].netloc, path, auth) for path in paths]

        async def direct(statement: tuple[str, dict[str, Any]]) -> bool:
            await sql.runQuery(*statement)
            return True

        async def drive(call: Any, items: list[Any], seconds: float,
                        samples: list[float], errors: list[int]) -> None:
            async def timed(item: Any) -> None:
                t = time.monotonic()
                ok = await call(item)
                samples.append(time.monotonic() - t)
                if not ok:
                    errors.append(1)

            pending = []
            count = int(rate * seconds)
            start = time.monotonic()
            for n in range(count):
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await task.deferLater(reactor, delay, lambda: None)
                pending.append(defer.ensureDeferred(timed(items[n % len(items)])))
            await defer.gatherResults(pending)

        sides: dict[str, Any] = {"sql": direct, **{side: http(side) for side in apis}}
        items = {(scenario, side): statements if side == "sql" else requests(side, paths)
                 for scenario, (paths, statements) in scenarios.items() for side in sides}
        collected: dict[tuple[str, str], tuple[list[float], list[int], float]] = {}
        for scenario in scenarios:
            for side, call in sides.items():  # warm-up, not measured: connections, caches
                for item in items[(scenario, side)][:20]:
                    await call(item)
        for _ in range(rounds):
            for scenario in scenarios:
                for side, call in sides.items():
                    samples, errors, spent = collected.get((scenario, side), ([], [], 0.0))
                    t = time.monotonic()
                    await drive(call, items[(scenario, side)], duration / rounds, samples,
                                errors)
                    collected[(scenario, side)] = (samples, errors, spent + time.monotonic() - t)
        for (scenario, side), (samples, errors, spent) in collected.items():
            results.setdefault(side, {})[scenario] = {
                **percentiles(samples), "rps": len(samples) / spent, "errors": len(errors)}
        for side in apis:
            if side in FLOORS:
                continue
            request = get_request(where[side].netloc, csv_path, {**auth, "Accept": "text/csv"})
            t = time.monotonic()
            status, body = await pool.get(where[side].hostname, where[side].port, request)
            seconds = time.monotonic() - t
            rows = body.count(b"\n") - 1
            results[side]["csv"] = {"rows": rows, "seconds": seconds,
                                    "rows_per_s": rows / seconds, "status": status}
        pool.close()
        sql.close()

    from twisted.internet import reactor

    failures: list[Any] = []
    done = defer.ensureDeferred(main(reactor))
    done.addErrback(failures.append)
    done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        failures[0].raiseException()
    return results


def existing(dsn: str, meters: int, days: int) -> datetime.date | None:
    """The first day of data already generated in ``dsn`` at this size (``--reuse``)."""
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.OperationalError:
        return None
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM meters")
            if cur.fetchone()[0] != meters:
                return None
            cur.execute("SELECT min(interval_end)::date, count(*) FROM readings")
            first, count = cur.fetchone()
            today = datetime.datetime.now(datetime.UTC).date()
            if count != meters * days * INTERVALS_PER_DAY \
                    or first != today - datetime.timedelta(days=days):
                return None
            return first  # type: ignore[no-any-return]
    except psycopg2.Error:
        return None
    finally:
        conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gridcloud import migrations
    from gridcloud.api import keys
    from gridcloud.api.resources import edges, readings

    admin = os.environ.get("GRIDEDGE_PG_DSN")
    if not admin:
        sys.exit("bench-api: run me under tools/pgcluster.py run (GRIDEDGE_PG_DSN)")
    name = "bench_api"
    dsn = " ".join([p for p in admin.split() if not p.startswith("dbname=")]
                   + [f"dbname={name}"])
    t = time.monotonic()
    first = existing(dsn, args.meters, args.days) if args.reuse else None
    if first is None:
        dsn = fresh_database(admin, name)
        print(f"generating {args.meters} meters x {args.days} days of readings ...",
              file=sys.stderr)
        first = generate(dsn, args.meters, args.days)
    else:
        migrations.migrate(dsn)
        print("reusing the readings generated before (--reuse)", file=sys.stderr)
    generated = time.monotonic() - t
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM readings")
        total = int(cur.fetchone()[0])
    conn.close()
    key = keys.create_key(dsn, f"bench-{os.getpid()}-{int(time.time())}", ["read"])

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

    blocking = {
        "meter-day": blocking_sql(dsn, meter_sql, args.rate, args.duration / 2),
        "edge-list": blocking_sql(dsn, edge_sql, args.rate, args.duration / 2),
        "csv": direct_csv(dsn, readings.EDGE_CSV_SQL, csv_args),
    }
    scenarios = {"meter-day": (meter_days, meter_sql), "edge-list": (["/v1/edges"], edge_sql)}
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        try:
            apis = {}
            proc, api = start_api(dsn, Path(tmp) / "api.log")
            procs.append(proc)
            bodies = api_bodies(api, key, {"meters": meter_days[0], "edges": "/v1/edges"},
                                Path(tmp))
            for kind in FLOORS:
                proc, apis[kind] = start_floor(Path(tmp) / f"{kind}.log", kind, bodies)
                procs.append(proc)
            if args.baseline is not None:
                proc, apis["before"] = start_baseline(dsn, Path(tmp) / "before.log",
                                                      args.baseline)
                procs.append(proc)
            apis["api"] = api
            measured = client_phases(dsn, key, apis, scenarios, csv_path, args.rate,
                                     args.duration, args.rounds)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    return {"rows": total, "generate_s": generated, "blocking": blocking, **measured}


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    sql, blocking = r["sql"], r["blocking"]
    sides = [s for s in (*FLOORS, "before", "api") if s in r]
    print(f"\nbench-api: {r['rows']:,} readings ({args.meters} meters, {args.days} days; "
          f"generated in {r['generate_s']:.0f} s), {args.rate:g} requests/s for "
          f"{args.duration:g} s per scenario and side in {args.rounds} alternating rounds"
          + (f"; before = {args.baseline}" if "before" in r else "") + "\n")
    head = f"{'scenario':<10} {'side':<7} {'p50':>8} {'p99':>8} {'req/s':>6} {'errors':>6} " \
           f"{'p50/SQL':>8}"
    print(head)
    out: dict[str, Any] = {"bench": "api", "rows": r["rows"], "rate": args.rate}
    notes: list[str] = []
    budgets: list[str] = []
    ok = True
    for name in ("meter-day", "edge-list"):
        s, b = sql[name], blocking[name]
        print(f"{name:<10} {'SQL':<7} {s['p50_ms']:>6.2f}ms {s['p99_ms']:>6.2f}ms "
              f"{s['rps']:>6.1f} {'':>6} {1:>8.1f}")
        print(f"{'':<10} {'SQL*':<7} {b['p50_ms']:>6.2f}ms {b['p99_ms']:>6.2f}ms "
              f"{b['rps']:>6.1f} {'':>6} {b['p50_ms'] / s['p50_ms']:>8.1f}")
        key = name.replace("-", "_")
        out[key] = {"sql_p50_ms": round(s["p50_ms"], 3), "sql_p99_ms": round(s["p99_ms"], 3),
                    "sql_blocking_p50_ms": round(b["p50_ms"], 3)}
        for side in sides:
            a = r[side][name]
            ratio = a["p50_ms"] / s["p50_ms"]
            print(f"{'':<10} {side:<7} {a['p50_ms']:>6.2f}ms {a['p99_ms']:>6.2f}ms "
                  f"{a['rps']:>6.1f} {a['errors']:>6} {ratio:>8.1f}")
            # keys: api_*, before_api_*, and the floors' web_* and klein_*
            prefix = "" if side == "api" else f"{side}_"
            name_p = prefix if side in FLOORS else f"{prefix}api_"
            out[key].update({f"{name_p}p50_ms": round(a["p50_ms"], 2),
                             f"{name_p}p99_ms": round(a["p99_ms"], 2),
                             f"{prefix}ratio_p50": round(ratio, 2),
                             f"{prefix}errors": a["errors"]})
        a = r["api"][name]
        ok = ok and a["p99_ms"] < P99_TARGET_MS and out[key]["ratio_p50"] <= RATIO_TARGET \
            and not a["errors"]
        # What the API's own code (key, parameters, the page, JSON, the answer's Deferreds)
        # adds to the Klein round trip and the SQL, and what the ratio target leaves it.
        own = a["p50_ms"] - r["klein"][name]["p50_ms"] - s["p50_ms"]
        budget = (RATIO_TARGET - 1) * s["p50_ms"] - r["klein"][name]["p50_ms"]
        out[key].update({"own_ms": round(own, 2), "own_budget_ms": round(budget, 2)})
        budgets.append(f"{name}: the API's own code {own:.2f} ms (api - klein - SQL); "
                       f"{RATIO_TARGET:g}x leaves it {budget:.2f} ms ({RATIO_TARGET - 1:g} x SQL "
                       f"- klein)")
        floor = r["web"][name]["p50_ms"]
        out[key]["floor_over_target"] = floor > RATIO_TARGET * s["p50_ms"]
        if out[key]["floor_over_target"]:
            notes.append(f"{name}: the bare twisted.web round trip alone ({floor:.2f} ms p50) "
                         f"is above {RATIO_TARGET:g}x the SQL ({RATIO_TARGET:g} x "
                         f"{s['p50_ms']:.2f} = {RATIO_TARGET * s['p50_ms']:.2f} ms): no API "
                         f"served by twisted.web can meet the ratio target in this run")
    print("SQL: the API's statement from the same client and reactor over txpostgres; "
          "SQL*: over blocking psycopg2;\nweb, klein: the API's answer sent at once by a bare "
          "twisted.web resource and by a bare Klein app (the HTTP round trip alone)")
    for line in budgets:
        print(line)
    for note in notes:
        print(f"NOTE {note}")
    d = blocking["csv"]
    out["csv"] = {"sql_rows_per_s": round(d["rows_per_s"])}
    for side in sides:
        if side in FLOORS:
            continue
        c = r[side]["csv"]
        print(f"\ncsv export of one edge-day ({side}): {c['rows']:,} rows in "
              f"{c['seconds']:.2f} s = {c['rows_per_s']:,.0f} rows/s; direct SQL "
              f"{d['rows_per_s']:,.0f} rows/s (ratio {d['rows_per_s'] / c['rows_per_s']:.1f}x)",
              end="")
        prefix = "" if side == "api" else f"{side}_"
        out["csv"].update({f"{prefix}rows": c["rows"],
                           f"{prefix}api_rows_per_s": round(c["rows_per_s"])})
    print()
    ok = ok and r["api"]["csv"]["rows_per_s"] >= CSV_TARGET and r["api"]["csv"]["status"] == 200
    out["targets"] = {"p99_ms": P99_TARGET_MS, "ratio_p50": RATIO_TARGET,
                      "csv_rows_per_s": CSV_TARGET, "met": ok}
    print(f"\ntargets: p99 < {P99_TARGET_MS:g} ms, API p50 <= {RATIO_TARGET:g}x SQL, "
          f"CSV >= {CSV_TARGET:,} rows/s: {'met' if ok else 'NOT met'}")
    print(json.dumps(out))


def main() -> None:
    if sys.argv[1:2] == ["--floor-server"]:
        floor_server(sys.argv[2], Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=5000)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per scenario and side")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternate the sides in this many rounds")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of another revision whose API runs beside this one")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the readings of an earlier run of this size if present")
    args = parser.parse_args()
    report(run(args), args)


if __name__ == "__main__":
    main()
