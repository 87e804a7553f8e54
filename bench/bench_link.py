"""make bench-link: what a unit really spends on its metered link in a day, on the real parts.

A simulated day, time-scaled, with the real parts and the production defaults:

  gridsim (--fleet field: 1,000 meters with sparse 6-7 digit serials, ~5% dormant,
           households and businesses; reports spread 5-294 s after each interval end;
           1% of reports lost in the mesh and fetched by the unit's overdue polls,
           meters going silent for 0.5-4 h (their readings arrive 2-16 intervals late),
           supply outages, prepaid relay cut-offs, tamper flags)
    -> pty -> `gridedge run` (production defaults: the config names only the radio port,
           the cloud and the data directory; bench/scaled_clock.py runs its reactor
           clock --speed times faster, nothing else)
    -> relay on 127.0.0.1 counting every byte on the socket in both directions,
       cutting all connections four times during the day
    -> `gridcloud serve` -> PostgreSQL (a throwaway database of the cluster named by
       GRIDEDGE_PG_DSN; `make bench-link` starts one with tools/pgcluster.py).

Printed: bytes per reading all-in (TCP payload through the relay: TLS, handshakes,
heartbeats, Acks, everything) and payload only (the gridwire frames the unit wrote
and read, from its own counters); batches per day; TLS + Hello + Welcome bytes of a
full and of a resumed connection, as the unit counts them on its socket; report-to-
commit latency (report time: the meter's scheduled report, interval end + its offset;
commit: first seen in PostgreSQL by polling every 50 ms real) p50 and p99 in simulated
seconds.  Beside them, computed on the same readings in the same run (grouped into
one upload per 15-minute slot, same connections): MQTT 3.1.1 + JSON, Sparkplug B and
a stateful columnar + zlib stream, carried over real TLS 1.3 (bench/wire_tls.py).

Every reading is checked against gridsim's ground truth: the count, and every field
of every reading, stored exactly once.

Prints a table, then one JSON object as the very last line.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_wire import mqtt_json_writes, over_tls, sparkplug_writes  # noqa: E402
from gridcloud.pki import PKIDirectory  # noqa: E402
from gridsim.model import make_meters  # noqa: E402
from gridsim.truth import GroundTruth  # noqa: E402
from wire_tls import TlsPair  # noqa: E402

from support.proxy import FaultProxy  # noqa: E402

BIN = Path(sys.executable).parent
SERVER_NAME = "cloud.gridedge.test"
EDGE_ID = "edge-bench-link"
START = calendar.timegm((2026, 11, 23, 0, 0, 0))  # a Monday, UTC
INTERVAL = 900
CUT_HOURS = (4.6, 9.3, 14.1, 19.7)
SIM_FAULTS = ("--drop-rate", "0.01", "--silence-rate", "0.03", "--outage-rate", "0.004",
              "--relay-open-rate", "0.02", "--tamper-rate", "0.0005")
TARGETS = {"bytes_per_reading_max": 6.0, "vs_columnar_zlib_min": 1.3,
           "resumed_handshake_bytes_max": 600, "full_handshake_bytes_max": 2400}
Row = tuple[int, int, int, int, int, int, int, int]


def with_db(dsn: str, name: str) -> str:
    return " ".join([p for p in dsn.split() if not p.startswith("dbname=")] + [f"dbname={name}"])


@contextlib.contextmanager
def database(admin: str, name: str) -> Iterator[str]:
    def run(sql: str) -> None:
        db = psycopg2.connect(admin)
        db.autocommit = True
        try:
            with db.cursor() as cur:
                cur.execute(sql)
        finally:
            db.close()

    run(f'DROP DATABASE IF EXISTS "{name}"')
    run(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield with_db(admin, name)
    finally:
        with contextlib.suppress(psycopg2.Error):
            run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Proc:
    """A subprocess with its log file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        out = log.open("ab")
        self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def wait_for(what: str, check: Any, timeout: float, *procs: Proc) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if not p.alive:
                raise SystemExit(f"bench_link: {p.name} exited while waiting for {what}:\n"
                                 + p.tail())
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_link: timed out waiting for {what}")
        time.sleep(0.05)


def edge_config(data: Path, radio: Path, relay_port: int, extra: str,
                radio_extra: str = "") -> str:
    """The unit's file: only what a site must say; every tuning key at its default."""
    return f"""\
data_dir = "{data}"

[edge]
firmware_version = "bench-link"
boot_slot = "A"

[radio]
port = "{radio}"
{radio_extra}
[uplink]
host = "127.0.0.1"
port = {relay_port}
server_name = "{SERVER_NAME}"
{extra}
[health]
socket = "{data}/health.sock"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(config: Path) -> dict[str, Any]:
    out = subprocess.run([str(BIN / "gridedge"), "health", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


# -- baselines on the same readings ------------------------------------------------------------


def columnar_zlib_writes(
    polls: list[list[Row]], groups: list[list[int]]
) -> list[list[tuple[str, bytes]]]:
    """A plain columnar upload per slot (each field a column of little-endian int64s), through
    one zlib stream per connection (sync-flushed per upload, so later uploads reuse earlier
    ones' dictionary), a 4-byte length before each and a 4-byte Ack after; a 2-byte ping
    and pong twice in each 15-minute gap (a 300 s keepalive), as bench_wire models."""
    out = []
    for group in groups:
        writes: list[tuple[str, bytes]] = []
        deflate = zlib.compressobj(9)
        for index in group:
            rows = polls[index]
            if rows:
                columns = b"".join(struct.pack(f"<{len(rows)}q", *col)
                                   for col in zip(*rows, strict=True))
                body = deflate.compress(columns) + deflate.flush(zlib.Z_SYNC_FLUSH)
                writes.append(("up", struct.pack(">I", len(body)) + body))
                writes.append(("down", struct.pack(">I", len(rows))))
            for _ in range(2):
                writes.append(("up", b"\x01\x00"))
                writes.append(("down", b"\x02\x00"))
        out.append(writes)
    return out


# -- the run -------------------------------------------------------------------------------


def run_day(args: argparse.Namespace, work: Path, dsn: str) -> dict[str, Any]:
    data = work / "edge"
    data.mkdir()
    folder = PKIDirectory(work / "pki")
    folder.init()
    folder.server([SERVER_NAME])
    folder.edge(EDGE_ID, data / "tls")
    pki = folder.path
    subprocess.run([str(BIN / "gridcloud"), "migrate", "--dsn", dsn], check=True,
                   capture_output=True)
    cloud_port = free_port()
    cloud = Proc("gridcloud", [str(BIN / "gridcloud"), "serve",
                               "--listen", f"tcp:{cloud_port}:interface=127.0.0.1",
                               "--cert", str(pki / "server.pem"), "--key",
                               str(pki / "server.key"), "--ca", str(pki / "ca.pem"),
                               "--dsn", dsn], work / "cloud.log")
    procs = [cloud]
    proxy = FaultProxy("127.0.0.1", cloud_port).start()
    try:
        import socket

        def listening() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", cloud_port), 1):
                return True
            return False

        wait_for("gridcloud serve to listen", listening, 60, cloud)
        radio = work / "radio"
        anchor = time.time() + 3.0
        duration = int(args.hours * 3600)
        truth_path = work / "truth.sqlite"
        sim = Proc("gridsim", [str(BIN / "gridsim"), "--fleet", "field", "--meters",
                               str(args.meters), "--seed", str(args.seed), "--port", str(radio),
                               "--speed", str(args.speed), "--start", str(START),
                               "--anchor", str(anchor), "--duration", str(duration),
                               "--truth", str(truth_path), "--linger", "600",
                               "--log-every", "30", *SIM_FAULTS], work / "gridsim.log")
        procs.append(sim)
        wait_for("gridsim's pty", radio.exists, 30, sim)
        config = work / "gridedge.toml"
        config.write_text(edge_config(data, radio, proxy.port, args.uplink, args.radio))
        edge = Proc("gridedge", [sys.executable, str(ROOT / "bench" / "scaled_clock.py"),
                                 str(START), str(args.speed), str(anchor), "gridedge.cli",
                                 "run", "--config", str(config)], work / "edge.log")
        procs.append(edge)

        def sim_now() -> float:
            return START + (time.time() - anchor) * args.speed

        seen: dict[tuple[int, int], float] = {}
        last_seq = 0
        cuts = [h * args.hours / 24 for h in CUT_HOURS]
        db = psycopg2.connect(dsn)
        db.autocommit = True
        deadline = time.monotonic() + duration / args.speed + 900
        total = None
        last_new = time.monotonic()
        try:
            while True:
                for p in procs:
                    if not p.alive:
                        raise SystemExit(f"bench_link: {p.name} exited:\n{p.tail()}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench_link: the day did not complete ({len(seen)} "
                                     f"readings stored, truth {total})")
                now = sim_now()
                if cuts and now >= START + cuts[0] * 3600:
                    cuts.pop(0)
                    proxy.cut()
                with db.cursor() as cur:
                    cur.execute("SELECT seq, meter_id, extract(epoch FROM interval_end)::bigint "
                                "FROM readings WHERE edge_id = %s AND seq > %s ORDER BY seq",
                                (EDGE_ID, last_seq))
                    got = cur.fetchall()
                stamp = sim_now()
                for seq, meter, end in got:
                    seen.setdefault((int(meter), int(end)), stamp)
                    last_seq = max(last_seq, int(seq))
                if total is None and truth_path.exists():
                    with GroundTruth(truth_path) as truth:
                        if truth.is_complete():
                            total = truth.count()
                if got:
                    last_new = time.monotonic()
                if total is not None and not cuts and (
                        len(seen) >= total or time.monotonic() - last_new > args.settle):
                    break  # all in, or the rest belongs to meters silent at the end
                time.sleep(0.05)
        finally:
            db.close()
        time.sleep(0.5)  # the last Ack and pings are counted too
        report = health(config)
        up, down = proxy.stats.bytes_up, proxy.stats.bytes_down
        edge.stop()
        sim.stop()
        log = (work / "edge.log").read_text(errors="replace")
        handshakes = {"new": [], "resumed": []}
        for kind, n in re.findall(r"uplink connected \((new|resumed) TLS session; (\d+) bytes",
                                  log):
            handshakes[kind].append(int(n))
        return {"up": up, "down": down, "seen": seen, "report": report,
                "handshakes": handshakes, "truth": truth_path, "connections":
                proxy.stats.connections, "cuts": proxy.stats.cuts}
    finally:
        proxy.close()
        for p in reversed(procs):
            p.stop()


def verify(dsn: str, truth_path: Path) -> tuple[list[Row], int, int]:
    """Every stored reading equals its ground-truth reading, once; every ground-truth reading
    is stored, except trailing runs of meters that went silent and did not come back before
    the run ended (never delivered, counted).  Returns the stored rows in seq order, the
    ground truth's count, and the count never delivered."""
    with contextlib.closing(psycopg2.connect(dsn)) as db, db.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (meter_id, interval_end)), "
                    "count(DISTINCT seq) FROM readings WHERE edge_id = %s", (EDGE_ID,))
        rows, keys, seqs = cur.fetchone()
        cur.execute("SELECT meter_id, extract(epoch FROM interval_end)::bigint, energy_wh, "
                    "max_demand_w, voltage_dv, current_ma, power_factor, flags "
                    "FROM readings WHERE edge_id = %s ORDER BY seq", (EDGE_ID,))
        stored = [tuple(int(v) for v in r) for r in cur.fetchall()]
    with GroundTruth(truth_path) as truth:
        expected = {(r.meter_id, r.interval_end): tuple(r) for r in truth.records()}
    if not rows == keys == seqs == len(stored):
        raise SystemExit(f"bench_link: {rows} rows but {keys} distinct keys, {seqs} seqs")
    wrong = [r for r in stored if expected.get((r[0], r[1])) != r]
    if wrong:
        raise SystemExit(f"bench_link: {len(wrong)} stored readings differ from the ground "
                         f"truth, e.g. {wrong[:3]}")
    have = {(r[0], r[1]) for r in stored}
    missing = [k for k in expected if k not in have]
    last_stored: dict[int, int] = {}
    for meter, end in have:
        last_stored[meter] = max(end, last_stored.get(meter, 0))
    stray = [k for k in missing if k[1] < last_stored.get(k[0], 0)]
    if stray:
        raise SystemExit(f"bench_link: {len(stray)} readings missing before later ones of the "
                         f"same meter were stored (lost, not late), e.g. {stray[:3]}")
    return stored, len(expected), len(missing)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--speed", type=float, default=200.0,
                        help="simulated seconds per real second (default 200: a day in 7 min)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--uplink", default="",
                        help="extra [uplink] lines (default none: production defaults)")
    parser.add_argument("--radio", default="",
                        help="extra [radio] lines, e.g. 'link_report_gap = 0' (no link quality "
                        "reports) to see what they cost")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="after the day, real seconds without a new reading before the "
                        "rest counts as never delivered (meters silent at the end)")
    args = parser.parse_args(argv)
    admin = os.environ.get("GRIDEDGE_PG_DSN")
    if not admin:
        sys.exit("bench_link: GRIDEDGE_PG_DSN is not set (run it with `make bench-link`)")
    work = Path(tempfile.mkdtemp(prefix="bench-link-"))
    try:
        with database(admin, "bench_link") as dsn:
            day = run_day(args, work, dsn)
            stored, produced, undelivered = verify(dsn, day["truth"])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}", file=sys.stderr)

    total = len(stored)
    uplink = day["report"]["snapshot"]["details"]["uplink"]
    wire = day["up"] + day["down"]
    payload = uplink.get("payload_sent", 0) + uplink.get("payload_received", 0)
    offsets = {m.params.meter_id: m.params.report_offset
               for m in make_meters(args.meters, args.seed, "field")}
    latency = sorted(day["seen"][(r[0], r[1])] - (r[1] + offsets[r[0]]) for r in stored)
    late = sum(1 for v in latency if v > INTERVAL)

    # Baselines: the same readings, one upload per 15-minute slot of their commit, the same
    # connections (a new one after each cut).
    slots: dict[int, list[Row]] = {}
    for r in stored:
        slot = int(day["seen"][(r[0], r[1])] - START) // INTERVAL
        slots.setdefault(slot, []).append(r)
    last = max(slots)
    polls = [slots.get(k, []) for k in range(last + 1)]
    cut_slots = [int(h * args.hours / 24 * 3600) // INTERVAL for h in CUT_HOURS]
    groups: list[list[int]] = [[]]
    for k in range(len(polls)):
        if k in cut_slots:
            groups.append([])
        groups[-1].append(k)
    tls = TlsPair()
    base = {
        "mqtt_json": over_tls(tls, mqtt_json_writes(polls, groups))["wire"] / total,
        "sparkplug_b": over_tls(tls, sparkplug_writes(polls, groups))["wire"] / total,
        "columnar_zlib": over_tls(tls, columnar_zlib_writes(polls, groups))["wire"] / total,
    }
    full = day["handshakes"]["new"]
    resumed = day["handshakes"]["resumed"]
    result = {
        "readings": total,
        "produced": produced,
        "never_delivered": undelivered,
        "bytes_per_reading": wire / total,
        "payload_bytes_per_reading": payload / total if payload else None,
        "bytes_up": day["up"],
        "bytes_down": day["down"],
        "batches": uplink.get("batches_sent"),
        "connections": day["connections"],
        "cuts": day["cuts"],
        "full_handshake_bytes": full[0] if full else None,
        "resumed_handshake_bytes": statistics.median(resumed) if resumed else None,
        "latency_p50_s": latency[len(latency) // 2],
        "latency_p99_s": latency[min(len(latency) - 1, int(len(latency) * 0.99))],
        "late_over_one_interval": late / total,
        "baselines_bytes_per_reading": base,
        "vs_columnar_zlib": base["columnar_zlib"] / (wire / total),
        "speed": args.speed,
        "uplink_overrides": args.uplink,
        "radio_overrides": args.radio,
    }
    result["targets"] = TARGETS
    result["met"] = {
        "bytes_per_reading": result["bytes_per_reading"] <= TARGETS["bytes_per_reading_max"],
        "vs_columnar_zlib": result["vs_columnar_zlib"] >= TARGETS["vs_columnar_zlib_min"],
        "resumed_handshake": (result["resumed_handshake_bytes"] or 1e9)
        <= TARGETS["resumed_handshake_bytes_max"],
        "full_handshake": (result["full_handshake_bytes"] or 1e9)
        <= TARGETS["full_handshake_bytes_max"],
    }
    print(f"make bench-link: {total} readings from {args.meters} meters, "
          f"{args.hours:g} h at {args.speed:g}x, {day['cuts']} link cuts, "
          f"{day['connections']} connections; every stored reading checked against the ground "
          f"truth ({undelivered} of {produced} never delivered: meters silent at the end)")
    payload_text = (f"{result['payload_bytes_per_reading']:.2f}"
                    if result["payload_bytes_per_reading"] else "n/a")
    lines = [
        ("gridwire all-in (socket, both directions)",
         f"{result['bytes_per_reading']:.2f} B/reading"),
        ("gridwire payload only (frames)", f"{payload_text} B/reading"),
        ("uploads (ReadingBatch) per day", str(result["batches"])),
        ("TLS + Hello + Welcome, full", f"{result['full_handshake_bytes']} B"),
        ("TLS + Hello + Welcome, resumed (median)", f"{result['resumed_handshake_bytes']} B"),
        ("report -> commit latency p50 / p99",
         f"{result['latency_p50_s']:.0f} s / {result['latency_p99_s']:.0f} s"),
        ("readings committed > 1 interval after report", f"{100 * late / total:.2f} %"),
        ("MQTT 3.1.1 + JSON (same readings)", f"{base['mqtt_json']:.2f} B/reading"),
        ("Sparkplug B (same readings)", f"{base['sparkplug_b']:.2f} B/reading"),
        ("columnar + zlib, stateful (same readings)", f"{base['columnar_zlib']:.2f} B/reading"),
        ("gridwire vs columnar + zlib", f"{result['vs_columnar_zlib']:.2f}x fewer bytes"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"  {k:<{width}}  {v}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
