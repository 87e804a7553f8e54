"""Web page benchmark: what the local page costs the unit, side by side.

One real `gridedge run` reading `gridsim --meters 1000` over a pty (no cloud: the journal
takes everything), measured three ways for the same wall time each:

1. without the page (``[web] enabled = false``): the baseline;
2. with the page and no browser attached;
3. with the page and 10 open live pages: 4 dashboards, 3 meters tables and 3 meter pages, each
   an authenticated Server-Sent Events stream over HTTPS (what a browser tab costs the unit;
   the browsers themselves run on the technician's phone or laptop, not here, so they are not
   started, which keeps their CPU off the cores the unit is measured on).

Reported per run: records stored by the radio link per second (the journal's sequence numbers
over the measured window), the edge's CPU time per record, its resident size (VmRSS) at the
end, and the bytes the live streams received.  Targets: the page adds at most 8 MB RSS, and
10 live pages do not lower the records stored per second (within 5 %).

Prints a table, then one JSON object as the very last line.

Run: make bench-web  (or .venv/bin/python bench/bench_web.py [--meters N] [--seconds S])
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TARGET_RSS_MB = 8.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _next_seq(config: Path) -> int:
    out = subprocess.run([str(BIN / "gridedge"), "health", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    try:
        return int(json.loads(out.stdout)["snapshot"]["details"]["journal"]["next_seq"])
    except (ValueError, KeyError):
        return 0


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench-web: timed out waiting for {what}")
        time.sleep(0.2)


class Streams:
    """N authenticated SSE streams to the page, read without blocking."""

    def __init__(self, port: int, token_file: Path, views: list[str], meter: int) -> None:
        self.port = port
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.cookie = self._provision(token_file.read_text().strip())
        self.sel = selectors.DefaultSelector()
        self.bytes = 0
        self.socks: list[ssl.SSLSocket] = []
        for view in views:
            query = f"view={view}" + (f"&meter={meter}" if view == "meter" else "")
            raw = socket.create_connection(("127.0.0.1", port))
            sock = self.ctx.wrap_socket(raw)
            sock.sendall(f"GET /events?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Cookie: {self.cookie}\r\nAccept: text/event-stream\r\n\r\n".encode())
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ)
            self.socks.append(sock)

    def _provision(self, token: str) -> str:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx)
        body = urllib.parse.urlencode({"token": token, "name": "bench",
                                       "password": "bench bench bench"})
        conn.request("POST", "/setup", body, {
            "content-type": "application/x-www-form-urlencoded",
            "origin": f"https://127.0.0.1:{self.port}"})
        resp = conn.getresponse()
        resp.read()
        cookie = resp.getheader("set-cookie") or ""
        m = re.match(r"([^=]+=[^;]+)", cookie)
        if resp.status != 302 or not m:
            raise SystemExit(f"bench-web: set-up failed: {resp.status}")
        return m.group(1)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            for key, _ in self.sel.select(timeout=min(left, 0.5)):
                sock: Any = key.fileobj
                try:
                    while data := sock.recv(65536):
                        self.bytes += len(data)
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass

    def close(self) -> None:
        for s in self.socks:
            s.close()


def run(meters: int, speed: float, seconds: float, web: bool, pages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        data = root / "data"
        port = _free_port()
        pty = root / "radio"
        sim = subprocess.Popen(
            [str(BIN / "gridsim"), "--meters", str(meters), "--port", str(pty), "--seed", "3",
             "--speed", str(speed), "--duration", "30d", "--start", "2026-11-20T00:00:00Z",
             "--log-every", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        config = root / "gridedge.toml"
        config.write_text(f"""data_dir = "{data}"
[edge]
firmware_version = "bench"
boot_slot = "A"
[radio]
port = "{pty}"
[uplink]
host = "127.0.0.1"
port = {_free_port()}
backoff_max = 60
[journal]
max_size = "512 MiB"
synchronous = "normal"
[log]
level = "warn"
[web]
enabled = {"true" if web else "false"}
address = "127.0.0.1"
port = {port}
""")
        log = (root / "edge.log").open("wb")
        streams: Streams | None = None
        edge: subprocess.Popen[bytes] | None = None
        try:
            _wait(pty.exists, 30, "gridsim's pty")
            edge = subprocess.Popen([str(BIN / "gridedge"), "run", "--config", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            _wait(lambda: _next_seq(config) > meters * 4, 120, "the first records")
            if web and pages:
                token = data / "web" / "provisioning-token"
                _wait(token.exists, 30, "the provisioning token")
                views = (["dash"] * 4 + ["meters"] * 3 + ["meter"] * 3)[:pages]
                streams = Streams(port, token, views, 100001)
            settle = 3.0
            if streams:
                streams.pump(settle)
            else:
                time.sleep(settle)
            seq0, cpu0, t0 = _next_seq(config), _cpu(edge.pid), time.monotonic()
            if streams:
                streams.pump(seconds)
            else:
                time.sleep(seconds)
            seq1, cpu1, t1 = _next_seq(config), _cpu(edge.pid), time.monotonic()
            records = seq1 - seq0
            return {
                "records_per_s": records / (t1 - t0),
                "cpu_us_per_record": (cpu1 - cpu0) / max(1, records) * 1e6,
                "cpu_percent": (cpu1 - cpu0) / (t1 - t0) * 100,
                "rss_mb": _rss_mb(edge.pid),
                "stream_bytes": float(streams.bytes if streams else 0),
            }
        finally:
            if streams:
                streams.close()
            for p in (edge, sim):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--speed", type=float, default=900.0,
                        help="gridsim's simulated seconds per second (900: a record per meter "
                             "per second)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    rows = {
        "without the page": run(args.meters, args.speed, args.seconds, False, 0),
        "page, no browser": run(args.meters, args.speed, args.seconds, True, 0),
        "page, 10 live pages": run(args.meters, args.speed, args.seconds, True, 10),
    }
    base = rows["without the page"]
    print(f"gridedge run with gridsim --meters {args.meters} at {args.speed:g}x, "
          f"{args.seconds:g} s measured per row")
    print(f"{'':<22} {'records/s':>10} {'CPU us/rec':>11} {'CPU %':>7} {'RSS MB':>8} "
          f"{'+RSS MB':>8} {'SSE bytes':>10}")
    for name, r in rows.items():
        print(f"{name:<22} {r['records_per_s']:>10.0f} {r['cpu_us_per_record']:>11.1f} "
              f"{r['cpu_percent']:>7.1f} {r['rss_mb']:>8.1f} "
              f"{r['rss_mb'] - base['rss_mb']:>8.1f} {r['stream_bytes']:>10.0f}")
    added = max(rows["page, no browser"]["rss_mb"], rows["page, 10 live pages"]["rss_mb"]) \
        - base["rss_mb"]
    ratio = rows["page, 10 live pages"]["records_per_s"] / max(1.0, base["records_per_s"])
    print(f"RSS added by the page: {added:.1f} MB (target <= {TARGET_RSS_MB:g}); records/s with "
          f"10 live pages: {ratio:.1%} of the baseline (target >= 95 %)")
    print(json.dumps({
        "bench": "web", "meters": args.meters, "speed": args.speed,
        "rss_added_mb": round(added, 2), "target_rss_added_mb": TARGET_RSS_MB,
        "records_per_s_ratio_10_pages": round(ratio, 4),
        "rows": {k: {m: round(v, 2) for m, v in r.items()} for k, r in rows.items()},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
