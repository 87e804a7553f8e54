#!/usr/bin/env python3
"""make bench-pipeline: readings per second through all pipeline stages, 1 and 2 workers,
beside the raw ingest rate of the same database.

Run under ``tools/pgcluster.py run`` (GRIDEDGE_PG_DSN names a throwaway cluster).

Phases, in one run so the numbers are comparable:

1. Raw ingest: a simulated fleet (1,000 prepaid meters on 20 edges, time-of-use tariffs,
   a week of 15-minute readings) is stored through ``ingest_batch()`` (the server's own
   statement, batches of 400 readings, one connection); only the calls are timed.
2. Pipeline, 1 worker: ``gridcloud pipeline`` (one process, concurrency 1) works through
   that backlog: aggregates, charges, alarms.  Readings/s = readings / time to empty.
3. Pipeline, 2 workers: the same on a fresh copy of the database with two processes.
4. Where the time goes: PostgreSQL's CPU time (its processes, from /proc) against the worker
   processes' own CPU time, and readings per PostgreSQL CPU-second: the rate the pipeline
   would reach per core PostgreSQL has to itself (the wall-clock rates depend on what else the
   shared machine runs).

Prints a table and, as the very last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.pipeline_data import Fleet, backlog, connect  # noqa: E402

TARGET = 50_000


def with_db(dsn: str, name: str) -> str:
    return " ".join([p for p in dsn.split() if not p.startswith("dbname=")] + [f"dbname={name}"])


def fresh(admin_dsn: str, name: str, template: str | None = None) -> str:
    conn = connect(admin_dsn)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    conn.close()
    return with_db(admin_dsn, name)


def postgres_cpu() -> float:
    """CPU seconds used so far by every postgres process (user + system)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm.startswith("postgres"):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def run_pipeline(dsn: str, workers: int, log: Path) -> dict[str, float]:
    cur = connect(dsn).cursor()
    total = backlog(cur)
    env = {**os.environ, "GRIDCLOUD_DSN": dsn}
    pg0 = postgres_cpu()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "gridcloud.cli", "pipeline",
                               "--concurrency", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
             for _ in range(workers)]
    try:
        while backlog(cur):
            time.sleep(0.2)
            if time.perf_counter() - t0 > 900:
                raise SystemExit("bench-pipeline: the pipeline did not finish in 15 minutes")
        elapsed = time.perf_counter() - t0
        pg = postgres_cpu() - pg0
        py = 0.0
        for p in procs:
            stat = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            py += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    return {"readings": total, "seconds": elapsed, "rate": total / elapsed,
            "postgres_cpu": pg, "python_cpu": py}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--meters", type=int, default=1000)
    args = parser.parse_args()
    admin = os.environ["GRIDEDGE_PG_DSN"]
    load = os.getloadavg()[0]
    sys.path.insert(0, str(ROOT / "apps/cloud/src"))
    from gridcloud import migrations

    base = fresh(admin, "bench_pipeline_base")
    migrations.migrate(base)
    cur = connect(base).cursor()
    fleet = Fleet(edges=20, per_edge=args.meters // 20, seed=3)
    fleet.setup(cur, balance=20_000)
    batches = list(fleet.batches(intervals=args.days * 96, per_batch=8))  # made before timing
    n = sum(len(rows) for _, rows in batches)
    t0 = time.perf_counter()
    for edge, rows in batches:
        fleet.ingest(cur, edge, rows)
    ingest_s = time.perf_counter() - t0
    cur.execute("VACUUM ANALYZE")
    cur.connection.close()
    log = Path("/tmp") / f"bench-pipeline-{os.getpid()}.log"
    results = {}
    for workers in (1, 2):
        dsn = fresh(admin, f"bench_pipeline_{workers}", template="bench_pipeline_base")
        results[workers] = run_pipeline(dsn, workers, log)
    print(f"{args.meters} prepaid meters, {args.days} days, {n:,} readings (all stages: "
          "aggregates, credit, alarms)")
    print(f"load average at the start: {load:.1f} (2 cores shared: wall-clock rates vary)")
    print(f"{'phase':<28} {'readings/s':>12} {'seconds':>9} {'PostgreSQL CPU s':>17} "
          f"{'worker CPU s':>13} {'readings/PG CPU s':>18}")
    print(f"{'raw ingest (ingest_batch)':<28} {n / ingest_s:>12,.0f} {ingest_s:>9.1f} "
          f"{'-':>17} {'-':>13} {'-':>18}")
    for workers, r in results.items():
        print(f"{f'pipeline, {workers} worker(s)':<28} {r['rate']:>12,.0f} {r['seconds']:>9.1f} "
              f"{r['postgres_cpu']:>17.1f} {r['python_cpu']:>13.1f} "
              f"{r['readings'] / max(r['postgres_cpu'], 1e-9):>18,.0f}")
    two = results[2]
    share = two["postgres_cpu"] / max(two["postgres_cpu"] + two["python_cpu"], 1e-9)
    print(f"time goes to PostgreSQL: {share:.0%} of the CPU used with 2 workers; "
          f"target {TARGET:,} readings/s: {'met' if two['rate'] >= TARGET else 'NOT met'}")
    summary: dict[str, Any] = {
        "readings": n,
        "ingest_readings_per_s": round(n / ingest_s),
        "pipeline_1_worker_readings_per_s": round(results[1]["rate"]),
        "pipeline_2_workers_readings_per_s": round(two["rate"]),
        "postgres_cpu_share": round(share, 3),
        "readings_per_postgres_cpu_s": round(two["readings"] / max(two["postgres_cpu"], 1e-9)),
        "load_average": round(load, 2),
        "target_readings_per_s": TARGET,
        "target_met": two["rate"] >= TARGET,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
