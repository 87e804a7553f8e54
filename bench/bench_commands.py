#!/usr/bin/env python3
"""make bench-commands: latency from POST /v1/commands to the unit's outcome in PostgreSQL.

Run under ``tools/pgcluster.py run`` (GRIDEDGE_PG_DSN names a throwaway cluster).
Everything talks over loopback only and every phase is bounded in time.

Set-up: one ``gridcloud serve`` node and one ``gridcloud api`` process over a fresh
database; 1,000 load-generator units (gridedge.loadgen, two processes, mutual TLS, each
accepting a command and reporting its outcome at once, within gridwire's in-flight window);
and one real unit: ``gridedge run`` with gridsim's meters on a pty.

Phases:

1. Latency, loadgen units: commands POSTed one after another at a steady rate
   (``--rate``/s) to random units (``upload_now``); latency = the outcome's commit
   (``commands.updated_at``) minus the insert (``created_at``), both PostgreSQL's clock, so
   it is the whole path: API insert -> NOTIFY -> serve -> TLS -> unit -> outcome event ->
   ingest.  The POST round trip is reported beside it.
2. Latency, the real unit: relay commands (open, close, ...) to one of gridsim's meters
   through the radio link over the pty (success only when the meter confirmed), and
   ``read_now``.
3. Throughput, one node: ``--flood`` commands inserted at once for the loadgen units;
   commands per second from the insert to the last outcome stored.

Prints a table and, as the very last line, one JSON object with the targets
(p50 < 100 ms, p99 < 500 ms for connected units).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import (
    SERVER_NAME,
    Server,
    _edge_tls,
    _hello,
    drop_database,
    free_port,
    fresh_database,
    raise_nofile,
)

PY = sys.executable
BIN = Path(PY).parent
P50_TARGET_MS = 100.0
P99_TARGET_MS = 500.0


def q(dsn: str, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# -- the loadgen units ------------------------------------------------------------------------


def role_units(args: argparse.Namespace) -> None:
    """``args.count`` units that answer every command at once; prints "ready" when all are
    connected, then holds them for ``args.hold`` seconds."""
    from gridcloud import pki
    from gridedge import loadgen
    from twisted.internet import defer, task

    raise_nofile()
    ca = pki.load_issued(Path(args.pki) / "ca.pem", Path(args.pki) / "ca.key")
    clients: list[Any] = []

    async def one(reactor: Any, i: int, gate: defer.DeferredSemaphore) -> None:
        async with gate:  # type: ignore[attr-defined]
            tls = _edge_tls(ca, f"{args.edge}-{i}")
            client, _ = await loadgen.connect(reactor, args.endpoint, tls, _hello(),
                                              answer_commands=True)
            await client.welcome
            clients.append(client)

    async def main(reactor: Any) -> None:
        gate = defer.DeferredSemaphore(50)
        await defer.gatherResults([defer.ensureDeferred(one(reactor, i, gate))
                                   for i in range(args.count)], consumeErrors=True)
        print("ready", flush=True)
        await task.deferLater(reactor, args.hold, lambda: None)
        print(json.dumps({"answered": sum(len(c.commands) for c in clients)}), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


# -- the run ------------------------------------------------------------------------------------


class Api:
    def __init__(self, work: Path, dsn: str) -> None:
        import re

        self.port = free_port()
        config = work / "api.toml"
        config.write_text(f'[api]\nlisten = "tcp:{self.port}:interface=127.0.0.1"\n'
                          "rate_limit = 100000.0\nrate_burst = 100000\n")
        self.log_path = work / "api.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([PY, "-m", "gridcloud.cli", "api", "--config", str(config),
                                      "--dsn", dsn], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not re.search("api listening", self.log_path.read_text()):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("gridcloud api did not start: see " + str(self.log_path))
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def post_commands(api: Api, key: str, bodies: list[dict[str, Any]], rate: float
                  ) -> tuple[list[int], list[float]]:
    """POST ``bodies`` at ``rate``/s; the ids and each POST's round trip (ms)."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    ids, trips = [], []
    start = time.perf_counter()
    for n, body in enumerate(bodies):
        wait = start + n / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = time.perf_counter()
        r = session.post(api.url + "/v1/commands", json=body, timeout=30)
        trips.append((time.perf_counter() - t) * 1000)
        if r.status_code != 201:
            raise RuntimeError(f"POST refused: {r.status_code} {r.text}")
        ids.append(int(r.json()["id"]))
    return ids, trips


def wait_final(dsn: str, ids: list[int], timeout: float) -> list[tuple[int, str, float]]:
    """(id, state, latency ms) of each command once all are final."""
    deadline = time.time() + timeout
    while True:
        rows = q(dsn, "SELECT id, state, extract(epoch FROM updated_at - created_at) * 1000 "
                 "FROM commands WHERE id = ANY(%s)", (ids,))
        if all(r[1] in ("succeeded", "failed", "expired") for r in rows) and len(rows) == len(ids):
            return [(int(i), s, float(ms)) for i, s, ms in rows]
        if time.time() > deadline:
            states: dict[str, int] = {}
            for r in rows:
                states[r[1]] = states.get(r[1], 0) + 1
            raise RuntimeError(f"commands not final after {timeout} s: {states}")
        time.sleep(0.2)


def real_unit(work: Path, folder: Any, port: int) -> tuple[subprocess.Popen[bytes], ...]:
    """gridsim with 8 meters at 900x and `gridedge run` over its pty."""
    data = work / "unit"
    folder.edge("bench-real-unit", data / "tls")
    radio = work / "radio"
    sim = subprocess.Popen(
        [str(BIN / "gridsim"), "--meters", "8", "--port", str(radio), "--seed", "3",
         "--speed", "900", "--duration", "5d", "--truth", str(work / "truth.sqlite")],
        stdout=(work / "gridsim.log").open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while not radio.exists():
        if time.time() > deadline:
            raise RuntimeError("gridsim did not open its pty")
        time.sleep(0.1)
    config = work / "gridedge.toml"
    config.write_text(f"""data_dir = "{data}"
[edge]
firmware_version = "bench"
boot_slot = "A"
[radio]
port = "{radio}"
[uplink]
host = "127.0.0.1"
port = {port}
server_name = "{SERVER_NAME}"
heartbeat = 30
batch_linger = 0.2
backoff_initial = 0.1
backoff_max = 1
[health]
socket = "{data}/health.sock"
[commands]
reboot_command = []
""")
    edge = subprocess.Popen([str(BIN / "gridedge"), "run", "--config", str(config)],
                            stdout=(work / "edge.log").open("w"), stderr=subprocess.STDOUT)
    return sim, edge


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gridcloud import pki
    from gridcloud.api import keys

    admin = os.environ.get("GRIDEDGE_PG_DSN")
    if not admin:
        sys.exit("bench_commands: GRIDEDGE_PG_DSN is not set (run it with `make bench-commands`)")
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    folder = pki.PKIDirectory(work / "pki")
    folder.init()
    folder.server([SERVER_NAME])
    dsn = fresh_database(admin, "bench_commands")
    server = Server(work, folder.path, dsn, pool_size=8)
    api = Api(work, dsn)
    key = keys.create_key(dsn, "bench", ["read", "write"])
    procs: list[subprocess.Popen[Any]] = []
    out: dict[str, Any] = {"units": args.units}
    try:
        per = args.units // args.procs
        for i in range(args.procs):
            procs.append(subprocess.Popen(
                [PY, __file__, "--role", "units", "--count", str(per), "--edge", f"lg{i}",
                 "--pki", str(folder.path), "--endpoint", server.endpoint,
                 "--hold", str(args.hold)], stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"load generator not ready: {line!r}")
        sim, edge = real_unit(work, folder, server.port)
        procs += [sim, edge]
        deadline = time.time() + 60
        while not q(dsn, "SELECT count(*) FROM meters WHERE edge_id = 'bench-real-unit'")[0][0]:
            if time.time() > deadline:
                raise RuntimeError("the real unit's meters never reached PostgreSQL")
            time.sleep(0.2)
        meter = int(q(dsn, "SELECT min(meter_id) FROM meters WHERE edge_id = "
                      "'bench-real-unit'")[0][0])
        online = int(q(dsn, "SELECT count(*) FROM edges WHERE session_token IS NOT NULL")[0][0])
        out["online"] = online

        # 1. loadgen units
        rng = random.Random(1)
        edges = [f"lg{i}-{j}" for i in range(args.procs) for j in range(per)]
        post_commands(api, key, [{"action": "upload_now", "edge_id": rng.choice(edges)}
                                 for _ in range(20)], args.rate)  # warm-up
        bodies = [{"action": "upload_now", "edge_id": rng.choice(edges)}
                  for _ in range(args.commands)]
        ids, trips = post_commands(api, key, bodies, args.rate)
        done = wait_final(dsn, ids, 60)
        lat = [ms for _, s, ms in done if s == "succeeded"]
        out["loadgen"] = {"n": len(lat), "failed": len(done) - len(lat),
                          "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                          "post_p50_ms": percentile(trips, 50),
                          "post_p99_ms": percentile(trips, 99)}

        # 2. the real unit: relay commands through the radio link, and read-now
        relay = [{"action": "relay_open" if n % 2 == 0 else "relay_close", "meter_id": meter}
                 for n in range(args.relays)]
        ids, trips = post_commands(api, key, relay, min(args.rate, 5.0))
        done = wait_final(dsn, ids, 120)
        lat = [ms for _, s, ms in done if s == "succeeded"]
        out["real_relay"] = {"n": len(lat), "failed": len(done) - len(lat),
                             "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}
        ids, _ = post_commands(api, key, [{"action": "read_now", "meter_id": meter}] * 10, 5.0)
        done = wait_final(dsn, ids, 120)
        lat = [ms for _, s, ms in done if s == "succeeded"]
        out["real_read"] = {"n": len(lat), "failed": len(done) - len(lat),
                            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}

        # 3. throughput of one node
        t0 = time.time()
        q(dsn, "INSERT INTO commands (edge_id, action, expires_at) SELECT e, 'upload_now', "
          "now() + interval '1 hour' FROM unnest(%s::text[]) AS e, generate_series(1, %s)",
          (edges, max(1, args.flood // len(edges))))
        total = len(edges) * max(1, args.flood // len(edges))
        deadline = t0 + 300
        while True:
            (left,), = q(dsn, "SELECT count(*) FROM commands WHERE state NOT IN "
                         "('succeeded', 'failed', 'expired')")
            if left == 0:
                break
            if time.time() > deadline:
                raise RuntimeError(f"{left} flood commands not final after 300 s")
            time.sleep(0.1)
        took = time.time() - t0
        out["flood"] = {"n": total, "seconds": took, "per_second": total / took}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        api.stop()
        server.stop()
        drop_database(admin, "bench_commands")
    return out


def report(r: dict[str, Any]) -> None:
    print(f"\ncommands: 1 gridcloud serve node, {r['units']} loadgen units "
          f"({r['online']} online incl. the real unit), loopback\n")
    print(f"{'path':<44} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
    rows = [
        ("POST -> outcome stored, loadgen units", r["loadgen"]),
        ("POST -> relay confirmed & stored, real unit", r["real_relay"]),
        ("POST -> read_now stored, real unit", r["real_read"]),
    ]
    for name, m in rows:
        print(f"{name:<44} {m['n']:>6} {m['p50_ms']:>9.1f} {m['p99_ms']:>9.1f}")
    lg = r["loadgen"]
    print(f"{'POST round trip (201, stored)':<44} {lg['n']:>6} {lg['post_p50_ms']:>9.1f} "
          f"{lg['post_p99_ms']:>9.1f}")
    f = r["flood"]
    print(f"\nthroughput: {f['n']} commands queued at once -> all outcomes stored in "
          f"{f['seconds']:.1f} s = {f['per_second']:.0f} commands/s (one node)")
    print(f"targets: p50 < {P50_TARGET_MS:.0f} ms, p99 < {P99_TARGET_MS:.0f} ms "
          "(connected units)\n")
    worst_p50 = max(lg["p50_ms"], r["real_relay"]["p50_ms"])
    worst_p99 = max(lg["p99_ms"], r["real_relay"]["p99_ms"])
    print(json.dumps({
        "bench": "commands",
        "units": r["units"],
        "loadgen_p50_ms": round(lg["p50_ms"], 1),
        "loadgen_p99_ms": round(lg["p99_ms"], 1),
        "real_relay_p50_ms": round(r["real_relay"]["p50_ms"], 1),
        "real_relay_p99_ms": round(r["real_relay"]["p99_ms"], 1),
        "real_read_p50_ms": round(r["real_read"]["p50_ms"], 1),
        "commands_per_second": round(f["per_second"], 1),
        "p50_target_ms": P50_TARGET_MS,
        "p99_target_ms": P99_TARGET_MS,
        "p50_met": worst_p50 < P50_TARGET_MS,
        "p99_met": worst_p99 < P99_TARGET_MS,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", choices=["main", "units"])
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--commands", type=int, default=500, help="latency sample, loadgen")
    parser.add_argument("--relays", type=int, default=40, help="latency sample, real unit")
    parser.add_argument("--rate", type=float, default=50.0, help="POSTs per second")
    parser.add_argument("--flood", type=int, default=20000)
    parser.add_argument("--hold", type=float, default=900)
    # worker-only arguments
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--edge")
    parser.add_argument("--pki")
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    if args.role == "units":
        role_units(args)
        return
    report(run(args))


if __name__ == "__main__":
    main()
