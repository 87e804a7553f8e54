#!/usr/bin/env python3
"""Run the whole gridedge stack on this machine: ``make demo``.

Starts, in order: a PostgreSQL cluster of the project's own (data kept under
the state folder), the schema migrations, a PKI (project CA, a server
certificate for ``localhost`` and one edge certificate) made on first run,
``gridcloud serve`` on loopback, ``gridsim`` with 1000 meters at high speed on
a pseudo-terminal, ``gridedge run`` reading that pseudo-terminal and
uploading to the cloud (and serving its local web page on loopback; the banner
prints its URL and, on a new unit, the first-login token), and ``gridcloud api``
(the HTTP API) with a read key made on first run (kept in ``<state>/api-key``).
Then it prints where to look (with a ``curl`` line that returns readings),
reports progress from
PostgreSQL every few seconds, and on Ctrl-C stops everything in reverse order.

Every process writes its log to ``<state>/logs/``.  A second run reuses the
database, certificates and journal, so it also shows resumption after a stop.
Tests: tests/test_demo.py runs it for a short while and checks readings arrive.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgcluster

EDGE_ID = "demo-edge-1"
DATABASE = "gridedge"


def _port(preferred: int) -> int:
    """``preferred`` if nothing listens there on loopback, else a free port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return pgcluster.free_port()
    return preferred


def _bin(name: str) -> str:
    """The console script of one of our apps, from the same virtualenv as this Python."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class Demo:
    def __init__(self, state: Path, meters: int, speed: float) -> None:
        self.state = state.resolve()
        self.meters = meters
        self.speed = speed
        self.logs = self.state / "logs"
        self.pki = self.state / "pki"
        self.edge_dir = self.state / "edge"
        self.radio = self.state / "radio.pty"
        self.truth = self.state / "truth.sqlite"
        self.cluster = pgcluster.Cluster(self.state / "pg")
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.dsn = ""
        self.api_url = ""
        self.api_key = ""
        self.web_port = _port(8443)
        self.web_token = ""

    def run_step(self, what: str, *cmd: str) -> None:
        print(f"demo: {what}", flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"demo: {what} failed:\n{result.stdout}{result.stderr}")

    def spawn(self, name: str, *cmd: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        print(f"demo: starting {name} (log: {log.name})", flush=True)
        self.processes.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL)))

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        print("demo: starting PostgreSQL", flush=True)
        self.cluster.start()
        admin = psycopg2.connect(self.cluster.dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DATABASE}")
        admin.close()
        self.dsn = self.cluster.dsn(DATABASE)
        self.run_step("applying schema migrations", _bin("gridcloud"), "migrate", "--dsn", self.dsn)
        self.make_pki()
        port = pgcluster.free_port()
        self.spawn("cloud", _bin("gridcloud"), "serve",
                   "--listen", f"tcp:{port}:interface=127.0.0.1",
                   "--cert", str(self.pki / "server.pem"), "--key", str(self.pki / "server.key"),
                   "--ca", str(self.pki / "ca.pem"), "--dsn", self.dsn)
        self.spawn("gridsim", _bin("gridsim"), "--meters", str(self.meters),
                   "--port", str(self.radio),
                   "--speed", str(self.speed), "--truth", str(self.truth), "--resume")
        self.wait_for(self.radio, "gridsim's serial port")
        config = self.edge_dir / "gridedge.toml"
        config.write_text(
            f'data_dir = "{self.edge_dir}"\n\n'
            f'[radio]\nport = "{self.radio}"\n\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {port}\nserver_name = "localhost"\n'
            # gridsim runs --speed times faster than the unit's clock: a deadline of a
            # few seconds stands for the production 600 s (docs/edge.md, upload_deadline)
            "heartbeat = 30\nbackoff_max = 10\nupload_deadline = 2\n\n"
            f'[health]\nsocket = "{self.edge_dir / "health.sock"}"\n\n'
            f'[web]\nenabled = true\naddress = "127.0.0.1"\nport = {self.web_port}\n'
        )
        self.spawn("edge", _bin("gridedge"), "run", "--config", str(config))
        self.wait_for_web()
        self.api_url = f"http://127.0.0.1:{pgcluster.free_port()}"
        self.spawn("api", _bin("gridcloud"), "api", "--dsn", self.dsn,
                   "--listen", f"tcp:{self.api_url.rsplit(':', 1)[1]}:interface=127.0.0.1",
                   "--public-url", self.api_url)
        self.api_key = self.demo_key()

    def wait_for_web(self) -> None:
        """The page listens once the edge logged its address; a new unit's token is on disk."""
        log = self.logs / "edge.log"
        deadline = time.monotonic() + 60
        while f"web page at https://127.0.0.1:{self.web_port}/" not in log.read_text(
                errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                sys.exit(f"demo: the edge's web page did not start; see {log}")
            time.sleep(0.2)
        token = self.edge_dir / "web" / "provisioning-token"
        self.web_token = token.read_text().strip() if token.exists() else ""

    def demo_key(self) -> str:
        """The demo's read key: made on the first run, then read from <state>/api-key."""
        from gridcloud.api import keys

        saved = self.state / "api-key"
        if saved.exists():
            return saved.read_text().strip()
        print("demo: creating the API key 'demo' (scope read)", flush=True)
        key = keys.create_key(self.dsn, "demo", ["read"])
        saved.touch(mode=0o600)
        saved.write_text(key + "\n")
        return key

    def make_pki(self) -> None:
        if (self.edge_dir / "tls" / "edge.pem").exists():
            return
        gc = _bin("gridcloud")
        self.run_step("creating the project CA", gc, "pki", "init", "--dir", str(self.pki))
        self.run_step("issuing the server certificate for localhost", gc, "pki", "server",
                      "--dir", str(self.pki), "--name", "localhost")
        self.run_step(f"issuing the certificate of edge {EDGE_ID}", gc, "pki", "edge",
                      "--dir", str(self.pki), "--edge-id", EDGE_ID,
                      "--out", str(self.edge_dir / "tls"))

    def wait_for(self, path: Path, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                sys.exit(f"demo: {what} did not appear at {path}")
            time.sleep(0.2)

    def check_alive(self) -> None:
        for name, proc in self.processes:
            if proc.poll() is not None:
                sys.exit(f"demo: {name} exited with {proc.returncode}; see {self.logs}/{name}.log")

    def banner(self) -> None:
        psql = shutil.which("psql") or "psql"
        print(f"""
demo: everything runs. Where to look:
  logs           {self.logs}/{{cloud,gridsim,edge,api}}.log
  edge journal   {self.edge_dir}/journal.db (SQLite)
  ground truth   {self.truth} (every reading gridsim's meters sent)
  readings       {psql} "{self.dsn}" -c 'SELECT count(*), count(DISTINCT meter_id) FROM readings'
  HTTP API       {self.api_url}/v1/openapi.json  (guide: docs/api.md)
  API key        {self.api_key}
  readings       curl -H 'Authorization: Bearer {self.api_key}' \\
                   '{self.api_url}/v1/edges/{EDGE_ID}/readings?limit=5'
  web page       https://127.0.0.1:{self.web_port}/  (the unit's own certificate: accept it once)
  first login    {("set up the administrator with the provisioning token " + self.web_token)
                  if self.web_token else "done already: log in with the account you made"}
  docs           docs/cloud.md (schema and queries), docs/api.md, docs/edge.md, docs/protocol.md
Ctrl-C stops the demo; `make demo` again resumes where it stopped.
""", flush=True)

    def report(self) -> None:
        with contextlib.suppress(psycopg2.Error), psycopg2.connect(self.dsn) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*), count(DISTINCT meter_id), max(interval_end) "
                            "FROM readings")
                count, meters, latest = cur.fetchone()
            print(f"demo: {count} readings from {meters} meters in PostgreSQL; "
                  f"latest interval {latest}", flush=True)
            conn.close()

    def report_api(self) -> None:
        """What the banner's curl line returns, fetched the same way."""
        request = urllib.request.Request(
            f"{self.api_url}/v1/edges/{EDGE_ID}/readings?limit=5",
            headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                items = json.load(answer)["items"]
        except (OSError, ValueError) as exc:
            print(f"demo: the HTTP API did not answer: {exc}", flush=True)
            return
        print(f"demo: the HTTP API returned {len(items)} readings of {EDGE_ID}", flush=True)

    def stop(self) -> None:
        for name, proc in reversed(self.processes):
            if proc.poll() is None:
                print(f"demo: stopping {name}", flush=True)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print("demo: stopping PostgreSQL", flush=True)
        with contextlib.suppress(pgcluster.ClusterError):
            self.cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=Path("var/demo"),
                        help="folder for the database, certificates, journal and logs")
    parser.add_argument("--meters", type=int, default=1000, help="simulated meters (default 1000)")
    parser.add_argument("--speed", type=float, default=900.0,
                        help="simulated seconds per real second (default 900: a day in 96 s)")
    parser.add_argument("--for", dest="duration", type=float, default=None,
                        help="stop by itself after this many seconds (default: run until Ctrl-C)")
    args = parser.parse_args(argv)
    demo = Demo(args.state, args.meters, args.speed)
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        demo.start()
        demo.banner()
        started = time.monotonic()
        while not stopping:
            demo.check_alive()
            if args.duration is not None and time.monotonic() - started > args.duration:
                break
            time.sleep(1)
            if int(time.monotonic() - started) % 10 == 0:
                demo.report()
        demo.report()
        demo.report_api()
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
