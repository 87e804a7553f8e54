"""Real processes for the end-to-end tests: gridsim on a pty -> `gridedge run` -> proxy ->
`gridcloud serve` -> PostgreSQL, and the checks against gridsim's ground truth.

Everything is a subprocess started the way an operator would (console scripts
and config files), on loopback, with certificates from gridcloud.pki.  Logs go
to files in the test's folder and are printed when a wait times out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from gridcloud.pki import PKIDirectory
from gridsim.truth import GroundTruth

from support.waiting import wait_until

BIN = Path(sys.executable).parent
SERVER_NAME = "cloud.gridedge.test"
EDGE_ID = "edge-system-1"
#: A fixed simulated start, so partitions and sums are the same on every run.
SIM_START = "2026-11-20T00:00:00Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    """The project CA, the cloud's certificate and one edge's tls/ folder."""

    dir: Path
    edge_tls: Path


def make_pki(root: Path, edge_data: Path) -> Pki:
    folder = PKIDirectory(root / "pki")
    folder.init()
    folder.server([SERVER_NAME])
    _, tls = folder.edge(EDGE_ID, edge_data / "tls")
    return Pki(folder.path, tls)


@dataclass
class Proc:
    """A subprocess with its log file."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    stdin: Any = subprocess.DEVNULL
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=self.stdin,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                raise AssertionError(
                    f"{self.name} did not stop on SIGTERM within {timeout} s") from None
        return int(self.popen.returncode)


class Cloud:
    """`gridcloud serve` on a fixed loopback port (so that a restart comes back there)."""

    def __init__(self, root: Path, pki: Pki, dsn: str) -> None:
        self.port = free_port()
        self.dsn = dsn
        self.log = root / "cloud.log"
        subprocess.run([str(BIN / "gridcloud"), "migrate", "--dsn", dsn], check=True,
                       capture_output=True)
        self.proc = Proc("gridcloud", [
            str(BIN / "gridcloud"), "serve",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--cert", str(pki.dir / "server.pem"), "--key", str(pki.dir / "server.key"),
            "--ca", str(pki.dir / "ca.pem"), "--dsn", dsn,
        ], self.log)

    def start(self) -> Cloud:
        self.proc.start()
        wait_until(self._listening, 30, "gridcloud serve to listen", (self.log,))
        return self

    def _listening(self) -> bool:
        if not self.proc.alive:
            raise AssertionError("gridcloud serve exited:\n" + self.log.read_text()[-3000:])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False


def edge_config(data: Path, *, uplink_port: int, radio: Path | None,
                journal_max: str = "64 MiB", extra: str = "", **uplink: object) -> str:
    """A gridedge.toml for tests: fast reconnects, short heartbeats; ``uplink`` overrides."""
    radio_section = f'[radio]\nport = "{radio}"\nbaudrate = 115200\n' if radio else ""
    settings: dict[str, object] = {
        "heartbeat": 5, "dead_after": 12, "connect_timeout": 10, "backoff_initial": 0.05,
        "backoff_max": 0.5, "batch_records": 200, "batch_linger": 0.2, "upload_deadline": 0,
        **uplink}
    uplink_lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    return f"""\
data_dir = "{data}"

[edge]
firmware_version = "test-1"
boot_slot = "A"

{radio_section}
[uplink]
host = "127.0.0.1"
port = {uplink_port}
server_name = "{SERVER_NAME}"
{uplink_lines}

[journal]
max_size = "{journal_max}"

[health]
socket = "{data}/health.sock"
radio_window = 60
uplink_window = 60
{extra}
"""


class Edge:
    """`gridedge run --config FILE` over a data directory."""

    def __init__(self, root: Path, data: Path, config_text: str) -> None:
        self.data = data
        self.config = root / "gridedge.toml"
        self.config.write_text(config_text)
        self.log = root / "edge.log"
        self.proc = Proc("gridedge", [str(BIN / "gridedge"), "run", "--config", str(self.config)],
                         self.log)

    def start(self) -> Edge:
        self.proc.start()
        return self

    def report(self) -> dict[str, Any]:
        """The running unit's full health report (`gridedge health --json`)."""
        out = subprocess.run(
            [str(BIN / "gridedge"), "health", "--json", "--config", str(self.config)],
            capture_output=True, text=True, timeout=30)
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def pending(self) -> int:
        """Entries waiting in the journal."""
        return int(self.report()["snapshot"]["details"]["journal"]["pending"])

    def health(self) -> tuple[int, str]:
        out = subprocess.run([str(BIN / "gridedge"), "health", "--config", str(self.config)],
                             capture_output=True, text=True, timeout=30)
        return out.returncode, out.stdout + out.stderr


class Sim:
    """gridsim with a few meters at high speed, writing the ground truth."""

    def __init__(self, root: Path, port: Path, *, meters: int, speed: float, duration: str,
                 seed: int = 7, extra: tuple[str, ...] = ()) -> None:
        self.truth_path = root / "truth.sqlite"
        self.port = port
        self.log = root / "gridsim.log"
        self.argv = [str(BIN / "gridsim"), "--meters", str(meters), "--port", str(port),
                     "--seed", str(seed), "--speed", str(speed), "--duration", duration,
                     "--start", SIM_START, "--truth", str(self.truth_path), "--log-every", "5",
                     *extra]
        self.proc = Proc("gridsim", self.argv, self.log)

    def start(self) -> Sim:
        self.proc.start()
        wait_until(lambda: self.port.exists(), 30, "gridsim's pty link", (self.log,))
        return self

    def complete(self) -> bool:
        if not self.truth_path.exists():
            return False
        with GroundTruth(self.truth_path) as truth:
            return bool(truth.is_complete())

    def expected(self) -> dict[int, tuple[int, int]]:
        """meter_id -> (records, sum of energy_wh registers) in the ground truth."""
        out: dict[int, list[int]] = {}
        with GroundTruth(self.truth_path) as truth:
            for r in truth.records():
                e = out.setdefault(r.meter_id, [0, 0])
                e[0] += 1
                e[1] += r.energy_wh
        return {m: (c, s) for m, (c, s) in out.items()}


@dataclass(frozen=True)
class Stored:
    """What PostgreSQL holds for the edge."""

    rows: int
    distinct_keys: int
    distinct_seqs: int
    per_meter: dict[int, tuple[int, int]]


def stored(dsn: str, edge_id: str = EDGE_ID) -> Stored:
    with contextlib.closing(psycopg2.connect(dsn)) as db, db.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(DISTINCT (meter_id, interval_end)), count(DISTINCT seq) "
            "FROM readings WHERE edge_id = %s", (edge_id,))
        rows, keys, seqs = cur.fetchone()
        cur.execute(
            "SELECT meter_id, count(*), sum(energy_wh) FROM readings WHERE edge_id = %s "
            "GROUP BY meter_id", (edge_id,))
        per_meter = {int(m): (int(c), int(s)) for m, c, s in cur.fetchall()}
    return Stored(int(rows), int(keys), int(seqs), per_meter)


def stored_rows(dsn: str) -> int:
    try:
        return stored(dsn).rows
    except psycopg2.Error:
        return -1


def assert_exactly_once(dsn: str, sim: Sim) -> Stored:
    """Every record gridsim produced is in PostgreSQL once: counts and energy sums match."""
    expected = sim.expected()
    got = stored(dsn)
    total = sum(c for c, _ in expected.values())
    assert got.rows == got.distinct_keys == got.distinct_seqs == total, (
        f"{got.rows} rows, {got.distinct_keys} distinct (meter, interval), "
        f"{got.distinct_seqs} distinct seqs; ground truth has {total}")
    assert got.per_meter == expected, "per-meter record counts / energy sums differ"
    return got


@contextlib.contextmanager
def running(*procs: Any) -> Iterator[None]:
    """Stop (SIGTERM, then kill) every process however the test ends."""
    try:
        yield
    finally:
        for p in procs:
            proc = p.proc if hasattr(p, "proc") else p
            with contextlib.suppress(Exception):
                proc.stop(10)
