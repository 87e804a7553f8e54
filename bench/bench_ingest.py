#!/usr/bin/env python3
"""make bench-ingest: ingest rate vs PostgreSQL's raw ceiling, idle-edge memory, TLS bytes.

Run under ``tools/pgcluster.py run`` (GRIDEDGE_PG_DSN names a throwaway cluster).
Everything talks over loopback only and every phase is bounded in time.

Phases, all in one run so the numbers are comparable:

1. Raw ceiling: worker processes call the server's own statement
   (gridcloud.ingest.INGEST_SQL, the same ``ingest_batch()`` call, same batch
   size) on their own connections, no network, no TLS, parameters prepared in
   advance.  1, 2 and 4 connections are tried; the best is the ceiling.
2. End to end: ``gridcloud serve`` runs as its own process; load-generator
   processes run many edges that speak gridwire over mutual TLS, each keeping a
   window of batches in flight.  Only readings committed *and* acknowledged
   inside the measuring window count.  Each round is measured twice, against
   one node and against two nodes behind HAProxy (deploy/haproxy/haproxy.cfg,
   PROXY v2, half the pool each), with the same edges and load.
3. Idle edges: a fresh ``gridcloud serve``; 10,000 edges (each with its own
   certificate, Hello/Welcome done) connect from two client processes and stay
   idle; the server's RSS growth divided by the edges is the memory per idle
   TLS connection.
4. Handshake bytes: one edge connects (full handshake) and reconnects with the
   TLS session ticket it got (resumption); bytes on the socket up to Welcome.

Prints a table and, as the very last line, one JSON object with the targets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVER_NAME = "cloud.bench.local"
BATCH = 500  # records per batch (an edge with 500 meters, one interval)
RATIO_TARGET = 0.6
IDLE_TARGET = 10_000


# -- helpers ------------------------------------------------------------------------------


def with_db(dsn: str, name: str) -> str:
    return " ".join([p for p in dsn.split() if not p.startswith("dbname=")] + [f"dbname={name}"])


def fresh_database(admin_dsn: str, name: str) -> str:
    import psycopg2

    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    conn.close()
    from gridcloud import migrations

    dsn = with_db(admin_dsn, name)
    migrations.migrate(dsn)
    return dsn


def drop_database(admin_dsn: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def columns_for(edge_index: int, variant: int, interval0: int) -> tuple[tuple[int, ...], ...]:
    """Eight columns of one batch: BATCH meters of this edge, one interval."""
    meters = tuple(edge_index * 1000 + j for j in range(BATCH))
    end = interval0 + 900 * variant
    return (
        meters,
        (end,) * BATCH,
        tuple(1_000_000 + 250 * variant + j for j in range(BATCH)),
        tuple(400 + j % 300 for j in range(BATCH)),
        tuple(2300 + j % 40 for j in range(BATCH)),
        tuple(1500 + j for j in range(BATCH)),
        tuple(900 + j % 100 for j in range(BATCH)),
        (0,) * BATCH,
    )


def interval0() -> int:
    now = int(time.time())
    return now - now % 900 - 900 * 8  # recent intervals: today's partition


# -- phase 1: raw ceiling -----------------------------------------------------------------


def role_raw(args: argparse.Namespace) -> None:
    """One raw worker: INGEST_SQL in a loop on one connection, parameters prepared up front."""
    import psycopg2
    from gridcloud.ingest import INGEST_SQL, batch_parameters

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("INSERT INTO edges (edge_id) VALUES (%s)", (args.edge,))
    t0 = interval0()
    # the array literals of 8 batches, prepared once; each call only gets its own first_seq
    arrays = [batch_parameters(args.edge, 1, columns_for(args.index, v, t0))[2:] for v in range(8)]
    while time.time() < args.start:
        time.sleep(0.005)
    rows = 0
    k = 0
    while time.time() < args.start + args.duration:
        # readings are unique on (meter_id, interval_end): each batch moves its interval by k s
        ends = "{" + ",".join([str(t0 + 900 * (k % 8) + k)] * BATCH) + "}"
        meters, _, *rest = arrays[k % 8]
        cur.execute(INGEST_SQL, (args.edge, 1 + BATCH * k, meters, ends, *rest))
        rows += BATCH
        k += 1
    cur.execute("SELECT readings_total FROM edges WHERE edge_id = %s", (args.edge,))
    stored = cur.fetchone()[0]
    if stored != rows:  # every call must really have inserted its batch
        sys.exit(f"raw worker {args.edge}: {rows} rows sent but {stored} stored")
    print(json.dumps({"rows": rows}))


_raw_runs = itertools.count()


def raw_ceiling(dsn: str, connections: int, duration: float) -> float:
    run = next(_raw_runs)  # fresh edges each run: a known edge would skip its old seqs
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [
                PY,
                __file__,
                "--role",
                "raw",
                "--dsn",
                dsn,
                "--edge",
                f"raw{run}-{i}",
                "--index",  # meters of their own: readings are unique on (meter, interval)
                str(run * 8 + i),
                "--start",
                str(start),
                "--duration",
                str(duration),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(connections)
    ]
    rows = sum(
        json.loads(p.communicate(timeout=duration + 120)[0].splitlines()[-1])["rows"] for p in procs
    )
    return rows / duration


# -- the cloud server process ---------------------------------------------------------------


class Server:
    """``gridcloud serve`` in its own process, on a free loopback port."""

    def __init__(
        self, work: Path, pki_dir: Path, dsn: str, pool_size: int, resumption: str = "cache",
        proxied: bool = False,
    ) -> None:
        self.port = free_port()
        #: /healthz and /metrics (HAProxy's health checks ask it)
        self.health = free_port()
        config = work / f"cloud-{self.port}.toml"
        # behind HAProxy: the PROXY v2 header first, as deploy/haproxy/haproxy.cfg sends it
        listen = ("haproxy:" if proxied else "") + f"tcp:{self.port}:interface=127.0.0.1"
        config.write_text(
            "[server]\n"
            f'listen = "{listen}:backlog=4096"\n'
            f'metrics_listen = "tcp:{self.health}:interface=127.0.0.1"\n'
            f'cert = "{pki_dir / "server.pem"}"\nkey = "{pki_dir / "server.key"}"\n'
            f'ca = "{pki_dir / "ca.pem"}"\n'
            "heartbeat_interval = 3600\nhello_timeout = 120\nmax_in_flight = 8\n"
            f'tls_resumption = "{resumption}"\n'
            f'[database]\ndsn = "{dsn}"\npool_size = {pool_size}\n'
            "[ingest]\nmax_pending_uploads = 4\n"
        )
        self.log = (work / f"cloud-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [PY, "-m", "gridcloud.cli", "serve", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gridcloud serve exited: see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gridcloud serve did not start listening")

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Balancer:
    """Debian's HAProxy with the shipped deploy/haproxy/haproxy.cfg in front of two servers."""

    def __init__(self, work: Path, servers: list[Server]) -> None:
        self.port = free_port()
        unused = [str(free_port()) for _ in range(4)]  # no API processes in this benchmark
        env = {
            **os.environ,
            "EDGE_BIND": f"127.0.0.1:{self.port}",
            "API_BIND": f"127.0.0.1:{free_port()}",
            "HAPROXY_SOCKET": str(work / f"haproxy-{self.port}.sock"),
            "HAPROXY_MAXCONN": "4000",
            "API1": f"127.0.0.1:{unused[0]}", "API2": f"127.0.0.1:{unused[1]}",
            "API1_HEALTH": unused[2], "API2_HEALTH": unused[3],
        }
        for i, server in enumerate(servers, 1):
            env[f"SERVE{i}"] = f"127.0.0.1:{server.port}"
            env[f"SERVE{i}_HEALTH"] = str(server.health)
        self.log = (work / f"haproxy-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        # both nodes marked UP (two health checks 1 s apart) before any edge connects
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: see {self.log.name}")
            if self._servers_up() == len(servers):
                return
            time.sleep(0.2)
        raise RuntimeError("haproxy did not see both servers up")

    def _servers_up(self) -> int:
        sock = Path(self.log.name.replace(".log", ".sock"))
        if not sock.exists():
            return 0
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"show stat\n")
            text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        return sum(1 for line in text.splitlines()
                   if line.startswith("serve,serve") and ",UP," in line)

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


# -- load generator processes ---------------------------------------------------------------


def _edge_tls(ca: Any, edge_id: str) -> Any:
    from gridcloud import pki
    from gridedge.uplink.tls import ResumingCreator
    from twisted.internet import ssl

    issued = pki.issue_edge(ca, edge_id, days=2)
    mine = ssl.PrivateCertificate.loadPEM(issued.cert_pem() + b"\n" + issued.key_pem())
    authority = ssl.Certificate.loadPEM(ca.cert_pem())
    return ResumingCreator(
        ssl.optionsForClientTLS(SERVER_NAME, trustRoot=authority, clientCertificate=mine)
    )


def _hello() -> Any:
    from gridwire import Hello

    return Hello(min_version=1, max_version=1, firmware_version="bench", boot_slot="A")


def role_load(args: argparse.Namespace) -> None:
    """Edges uploading as fast as acks allow; reports readings acked inside the window."""
    from gridcloud import pki
    from gridedge import loadgen
    from gridwire import IntervalRecord, ReadingBatch, RecordColumns
    from twisted.internet import defer, task

    raise_nofile()
    ca = pki.load_issued(Path(args.pki) / "ca.pem", Path(args.pki) / "ca.key")
    t0 = interval0()
    acked_in_window = 0
    acked_total = 0

    async def edge(reactor: Any, index: int) -> None:
        nonlocal acked_in_window, acked_total
        edge_id = f"{args.edge}-{index}"
        tls = _edge_tls(ca, edge_id)
        client, _ = await loadgen.connect(reactor, args.endpoint, tls, _hello())
        welcome = await client.welcome
        variants = [
            RecordColumns.build(
                **dict(
                    zip(
                        IntervalRecord._fields,
                        columns_for(args.index * 1000 + index, v, t0),
                        strict=True,
                    )
                )
            )
            for v in range(8)
        ]
        seq = welcome.last_acked_seq + 1
        window = min(args.window, welcome.max_in_flight)
        pending: list[defer.Deferred[int]] = []
        k = 0
        while time.time() < args.start + args.duration:
            while len(pending) < window:
                # readings are unique on (meter_id, interval_end): move the interval by k s
                columns = replace(variants[k % 8], interval_end=(t0 + 900 * (k % 8) + k,) * BATCH)
                pending.append(client.upload(ReadingBatch(first_seq=seq, columns=columns)))
                seq += BATCH
                k += 1
            await pending.pop(0)
            now = time.time()
            acked_total += BATCH
            if args.start <= now < args.start + args.duration:
                acked_in_window += BATCH
        for d in pending:
            await d
            acked_total += BATCH
        client.transport.loseConnection()

    async def main(reactor: Any) -> None:
        edges = [defer.ensureDeferred(edge(reactor, i)) for i in range(args.edges)]
        await defer.gatherResults(edges)
        print(json.dumps({"acked_in_window": acked_in_window, "acked_total": acked_total}))

    task.react(lambda r: defer.ensureDeferred(main(r)))


def role_idle(args: argparse.Namespace) -> None:
    """Many edges connect (full TLS + Hello/Welcome), report READY, then stay idle until killed."""
    from gridcloud import pki
    from gridedge import loadgen
    from twisted.internet import defer, task

    limit = raise_nofile()
    ca = pki.load_issued(Path(args.pki) / "ca.pem", Path(args.pki) / "ca.key")
    tls_list = [_edge_tls(ca, f"{args.edge}-{i}") for i in range(args.edges)]
    clients: list[Any] = []
    failures: list[str] = []

    async def one(reactor: Any, i: int, gate: defer.DeferredSemaphore) -> None:
        await gate.acquire()
        try:
            client, _ = await loadgen.connect(reactor, args.endpoint, tls_list[i], _hello())
            await client.welcome.addTimeout(120, reactor)
            clients.append(client)
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            gate.release()

    async def main(reactor: Any) -> None:
        gate = defer.DeferredSemaphore(64)
        await defer.gatherResults(
            [defer.ensureDeferred(one(reactor, i, gate)) for i in range(args.edges)]
        )
        print(
            json.dumps(
                {
                    "connected": len(clients),
                    "failed": len(failures),
                    "first_failure": failures[:1],
                    "nofile": limit,
                }
            ),
            flush=True,
        )
        await task.deferLater(reactor, args.hold, lambda: None)

    task.react(lambda r: defer.ensureDeferred(main(r)))


def role_handshake(args: argparse.Namespace) -> None:
    """Bytes on the socket up to Welcome: a full TLS handshake, then a resumed one."""
    from gridcloud import pki
    from gridedge import loadgen
    from twisted.internet import defer, task

    ca = pki.load_issued(Path(args.pki) / "ca.pem", Path(args.pki) / "ca.key")
    tls = _edge_tls(ca, args.edge)
    out: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        for kind in ("full", "resumed"):
            client, counter = await loadgen.connect(
                reactor, args.endpoint, tls, _hello(), counting=True
            )
            await client.welcome.addTimeout(30, reactor)
            await task.deferLater(reactor, 0.2, lambda: None)  # session tickets arrive
            assert counter is not None
            out[kind] = {
                "in": counter.received,
                "out": counter.sent,
                "resumed": client.resumed,
            }
            client.transport.loseConnection()
            await client.lost
        print(json.dumps(out))

    task.react(lambda r: defer.ensureDeferred(main(r)))


def spawn(role: str, **kw: Any) -> subprocess.Popen[str]:
    argv = [PY, __file__, "--role", role]
    for key, value in kw.items():
        argv += [f"--{key}", str(value)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def last_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load generator printed no result (exit {proc.returncode})")
    return json.loads(lines[-1])


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gridcloud import pki

    admin = os.environ.get("GRIDEDGE_PG_DSN")
    if not admin:
        sys.exit("bench_ingest: GRIDEDGE_PG_DSN is not set (run it with `make bench-ingest`)")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    pki_dir = work / "pki"
    folder = pki.PKIDirectory(pki_dir)
    folder.init()
    folder.server([SERVER_NAME])
    results: dict[str, Any] = {}

    # 1. raw ceiling: first find how many connections pay, then alternate raw and
    # end-to-end rounds so that both see the same machine load (2 shared cores).
    raw_db = fresh_database(admin, "bench_raw")
    e2e_db = fresh_database(admin, "bench_e2e")
    scan = {n: raw_ceiling(raw_db, n, args.scan) for n in args.raw_connections}
    best_n = max(scan, key=lambda n: scan[n])
    raw_rounds: list[float] = []
    e2e_rounds: list[float] = []
    cpu_rounds: list[float] = []
    total = 0
    two_db = fresh_database(admin, "bench_e2e2")
    two_rounds: list[float] = []
    two_cpu: list[float] = []
    two_total = 0
    server = Server(work, pki_dir, e2e_db, pool_size=args.pool, resumption="tickets")
    # the two-node setting: half the pool each, so both settings hold as many connections
    pair = [Server(work, pki_dir, two_db, pool_size=max(1, args.pool // 2), proxied=True)
            for _ in range(2)]
    balancer = Balancer(work, pair)
    try:
        hs_tickets = last_json(
            spawn("handshake", pki=pki_dir, endpoint=server.endpoint, edge="hs-t"), 60
        )
        for round_no in range(args.rounds):
            raw_rounds.append(raw_ceiling(raw_db, best_n, args.duration))
            # 2. end to end: fresh edges each round, measured after a warm-up; one node,
            # then two nodes behind HAProxy, with the same edges and load
            rate, cpu, acked = e2e_round(args, pki_dir, server.endpoint, [server],
                                         f"tp{round_no}", round_no * 2)
            e2e_rounds.append(rate)
            cpu_rounds.append(cpu)
            total += acked
            rate, cpu, acked = e2e_round(args, pki_dir, balancer.endpoint, pair,
                                         f"tq{round_no}", round_no * 2 + 1)
            two_rounds.append(rate)
            two_cpu.append(cpu)
            two_total += acked
    finally:
        server.stop()
        balancer.stop()
        for node in pair:
            node.stop()
    stored = _count(e2e_db)
    two_stored = _count(two_db)
    drop_database(admin, "bench_raw")
    drop_database(admin, "bench_e2e")
    drop_database(admin, "bench_e2e2")
    results["raw_scan"] = scan
    results["raw"] = raw_rounds
    results["e2e"] = {
        "rounds": e2e_rounds,
        "server_cpu": sum(cpu_rounds) / len(cpu_rounds),
        "acked_total": total,
        "stored": stored,
    }
    results["two_nodes"] = {
        "rounds": two_rounds,
        "server_cpu": sum(two_cpu) / len(two_cpu),
        "acked_total": two_total,
        "stored": two_stored,
    }

    # 3 and 4: idle edges and handshake bytes, on a fresh server
    idle_db = fresh_database(admin, "bench_idle")
    server = Server(work, pki_dir, idle_db, pool_size=4)
    try:
        hs = last_json(spawn("handshake", pki=pki_dir, endpoint=server.endpoint, edge="hs-1"), 60)
        time.sleep(1)
        rss0 = rss_kib(server.proc.pid)
        per_proc = args.idle // 2
        idle_procs = [
            spawn(
                "idle",
                pki=pki_dir,
                endpoint=server.endpoint,
                edge=f"idle{i}",
                edges=per_proc,
                hold=600,
            )
            for i in range(2)
        ]
        ready = []
        for p in idle_procs:
            assert p.stdout is not None
            line = p.stdout.readline()  # the READY report; the process then holds
            ready.append(
                json.loads(line) if line.startswith("{") else {"connected": 0, "failed": per_proc}
            )
        time.sleep(3)
        rss1 = rss_kib(server.proc.pid)
        connected = sum(r["connected"] for r in ready)
        for p in idle_procs:
            p.terminate()
            p.wait(timeout=30)
    finally:
        server.stop()
    drop_database(admin, "bench_idle")
    results["idle"] = {
        "connected": connected,
        "rss0_kib": rss0,
        "rss1_kib": rss1,
        "per_conn_kib": (rss1 - rss0) / max(connected, 1),
        "first_failure": [r.get("first_failure") for r in ready],
    }
    results["handshake"] = {"cache": hs, "tickets": hs_tickets}
    results["best_n"] = best_n
    return results


def e2e_round(args: argparse.Namespace, pki_dir: Path, endpoint: str, servers: list[Server],
              edge: str, index: int) -> tuple[float, float, int]:
    """One measured end-to-end round against ``endpoint``: (acked readings/s inside the
    window, CPU cores the servers used together, readings acked in all)."""
    start = time.time() + args.warmup + 3
    loads = [
        spawn(
            "load",
            pki=pki_dir,
            endpoint=endpoint,
            edge=f"{edge}-{i}",
            index=index * args.procs + i,
            edges=args.edges // args.procs,
            window=args.window,
            start=start,
            duration=args.duration,
        )
        for i in range(args.procs)
    ]
    while time.time() < start:
        time.sleep(0.01)
    cpu0 = sum(cpu_seconds(s.proc.pid) for s in servers)
    time.sleep(args.duration)
    cpu = (sum(cpu_seconds(s.proc.pid) for s in servers) - cpu0) / args.duration
    outs = [last_json(p, args.duration + 180) for p in loads]
    rate = sum(o["acked_in_window"] for o in outs) / args.duration
    return rate, cpu, sum(o["acked_total"] for o in outs)


def _count(dsn: str) -> int:
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM readings")
        n = int(cur.fetchone()[0])
    conn.close()
    return n


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    ceiling = mean(r["raw"])
    e2e = mean(r["e2e"]["rounds"])
    ratio = e2e / ceiling if ceiling else 0.0
    best_n = r["best_n"]
    hs = r["handshake"]
    size = {
        mode: {kind: v[kind]["in"] + v[kind]["out"] for kind in ("full", "resumed")}
        for mode, v in hs.items()
    }
    idle = r["idle"]
    two = r["two_nodes"]
    two_e2e = mean(two["rounds"])
    exactly_once = (r["e2e"]["stored"] == r["e2e"]["acked_total"]
                    and two["stored"] == two["acked_total"])
    rounds = " ".join(f"{x / 1000:.0f}k" for x in r["raw"])
    e2e_rounds = " ".join(f"{x / 1000:.0f}k" for x in r["e2e"]["rounds"])
    w = 60
    print()
    print("gridcloud ingest benchmark (loopback, one PostgreSQL 15, 2 cores shared by all)")
    print(
        f"  batches of {BATCH} readings; e2e: {args.edges} edges in {args.procs} load processes,"
        f" window {args.window}, server pool {args.pool};\n  {args.rounds} rounds of"
        f" {args.duration:.0f} s, raw and e2e alternating"
    )
    print()
    print(f"  {'measure':<{w}} {'value':>16}")
    print(f"  {'-' * w} {'-' * 16}")
    for n, rate in r["raw_scan"].items():
        label = f"raw INGEST_SQL, {n} connection(s), {args.scan:.0f} s scan"
        print(f"  {label:<{w}} {rate:>12,.0f} r/s")
    label = f"raw ceiling, {best_n} connection(s) (rounds: {rounds})"
    print(f"  {label:<{w}} {ceiling:>12,.0f} r/s")
    print(f"  {f'end to end, mutual TLS, acked (rounds: {e2e_rounds})':<{w}} {e2e:>12,.0f} r/s")
    print(f"  {'ratio end-to-end / raw ceiling (target >= 0.6)':<{w}} {ratio:>16.2f}")
    print(f"  {'gridcloud serve CPU during e2e (cores)':<{w}} {r['e2e']['server_cpu']:>16.2f}")
    two_rounds = " ".join(f"{x / 1000:.0f}k" for x in two["rounds"])
    label = f"two nodes behind HAProxy, acked (rounds: {two_rounds})"
    print(f"  {label:<{w}} {two_e2e:>12,.0f} r/s")
    print(f"  {'two nodes / one node':<{w}} {two_e2e / e2e if e2e else 0.0:>16.2f}")
    print(f"  {'both gridcloud serve nodes CPU during e2e (cores)':<{w}} "
          f"{two['server_cpu']:>16.2f}")
    print(f"  {'readings stored == readings acked (exactly once)':<{w}} {exactly_once!s:>16}")
    print(f"  {'idle TLS edges held by one process (target 10,000)':<{w}} {idle['connected']:>16,}")
    rss = f"{idle['rss0_kib'] / 1024:.0f} / {idle['rss1_kib'] / 1024:.0f}"
    print(f"  {'server RSS before / after the idle edges (MiB)':<{w}} {rss:>16}")
    print(f"  {'memory per idle TLS edge (KiB)':<{w}} {idle['per_conn_kib']:>16.1f}")
    for mode, label in (("cache", "session cache (default)"), ("tickets", "stateless tickets")):
        full, resumed = size[mode]["full"], size[mode]["resumed"]
        print(f"  {f'bytes to Welcome, full handshake, {label}':<{w}} {full:>16,}")
        print(f"  {f'bytes to Welcome, resumed session, {label}':<{w}} {resumed:>16,}")
    print()
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "batch_records": BATCH,
                "raw_ceiling_rows_per_s": round(ceiling),
                "raw_connections": best_n,
                "e2e_rows_per_s": round(e2e),
                "two_nodes_rows_per_s": round(two_e2e),
                "two_nodes_ratio": round(two_e2e / e2e, 3) if e2e else 0.0,
                "ratio": round(ratio, 3),
                "ratio_target": RATIO_TARGET,
                "ratio_ok": ratio >= RATIO_TARGET,
                "exactly_once": exactly_once,
                "idle_edges": idle["connected"],
                "idle_edges_target": IDLE_TARGET,
                "idle_ok": idle["connected"] >= IDLE_TARGET,
                "kib_per_idle_edge": round(idle["per_conn_kib"], 1),
                "handshake_bytes_full": size["cache"]["full"],
                "handshake_bytes_resumed": size["cache"]["resumed"],
                "handshake_bytes_full_tickets": size["tickets"]["full"],
                "handshake_bytes_resumed_tickets": size["tickets"]["resumed"],
                "resumed": all(v["resumed"]["resumed"] for v in hs.values()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--role", default="main", choices=["main", "raw", "load", "idle", "handshake"]
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measured round")
    parser.add_argument(
        "--scan",
        type=float,
        default=3.0,
        help="seconds per raw run when choosing the number of connections",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw / e2e rounds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--edges", type=int, default=40)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--idle", type=int, default=IDLE_TARGET)
    parser.add_argument("--raw-connections", type=int, nargs="+", default=[1, 2, 4])
    # worker-only arguments
    parser.add_argument("--dsn")
    parser.add_argument("--edge")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--start", type=float)
    parser.add_argument("--pki")
    parser.add_argument("--endpoint")
    parser.add_argument("--hold", type=float, default=600)
    args = parser.parse_args()
    roles = {"raw": role_raw, "load": role_load, "idle": role_idle, "handshake": role_handshake}
    if args.role in roles:
        roles[args.role](args)
        return
    report(run(args), args)


if __name__ == "__main__":
    main()
