"""Helpers of the HTTP API tests: a real ``gridcloud api`` process over a real PostgreSQL
seeded through the real ingest path.

Seeding runs the very statements gridcloud.ingest runs (``INGEST_SQL`` with
``batch_parameters``, and ``ingest_event()``) over blocking psycopg2, so the data
lands exactly as when an edge uploads it (high-water marks, meters, the feed log).

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_auth.py,
tests/cloud/test_api_bad_input.py, tests/cloud/test_api_schema.py,
tests/cloud/test_api_csv.py, tests/cloud/test_api_feed.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import requests
from gridcloud import ingest, migrations
from gridcloud.api import keys
from gridwire import IntervalRecord

from support.waiting import wait_until

T0 = 1_795_000_000  # 2026-11-17T...Z, an interval end (same as support.cloud_harness.T0)
INTERVAL = 900


def readings(meters: Sequence[int], start: int, count: int, energy: int = 1000
             ) -> list[IntervalRecord]:
    """``count`` consecutive intervals of every meter in ``meters`` (interval-major order)."""
    out = []
    for i in range(count):
        for m in meters:
            out.append(IntervalRecord(m, start + i * INTERVAL, energy + i * 10 + m, 400 + m,
                                      2301, 1500, 950, 1 if m % 2 else 0))
    return out


def admit(dsn: str, edge_id: str, firmware: str = "1.0.0") -> None:
    """The edge's row as admission creates it."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO edges (edge_id, last_connected_at, last_peer, firmware_version, boot_slot)"
            " VALUES (%s, now(), '192.0.2.7:4000', %s, 'A') ON CONFLICT DO NOTHING",
            (edge_id, firmware),
        )
    conn.close()


def ingest_records(dsn: str, edge_id: str, first_seq: int, records: Sequence[IntervalRecord],
                   batch: int = 8192) -> int:
    """Store ``records`` as batches from ``first_seq`` with ingest's statement; the next seq."""
    conn = psycopg2.connect(dsn)
    try:
        seq = first_seq
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            columns = list(zip(*chunk, strict=True))
            with conn, conn.cursor() as cur:
                cur.execute(ingest.INGEST_SQL, ingest.batch_parameters(edge_id, seq, columns))
            seq += len(chunk)
        return seq
    finally:
        conn.close()


def ingest_event(dsn: str, edge_id: str, seq: int, meter_id: int, time: int, kind: int,
                 detail: str = "") -> None:
    """Store one EventReport as IngestStore.write_event does."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT ingest_event(%s, %s, %s, %s, %s, %s)",
                    (edge_id, seq, meter_id, time, kind, detail))
    conn.close()


def add_traffic(dsn: str, rows: Sequence[tuple[str, str, int, int]]) -> None:
    """Add (edge, day, up, down) byte counts with the statement a serve node flushes with."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(ingest.TRAFFIC_SQL, [list(c) for c in zip(*rows, strict=True)])
    conn.close()


def query(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@dataclass
class ApiProcess:
    """A ``gridcloud api`` child process on a free loopback port."""

    dsn: str
    log: Path
    settings: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> ApiProcess:
        config = self.log.with_suffix(".toml")
        lines = ["[api]", 'listen = "tcp:0:interface=127.0.0.1"']
        lines += [f"{k} = {_toml(v)}" for k, v in self.settings.items()
                  if not isinstance(v, dict)]
        for section, values in self.settings.items():  # e.g. releases={...}: [releases]
            if isinstance(values, dict):
                lines += [f"[{section}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]
        config.write_text("\n".join(lines) + "\n")
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridcloud.cli", "api", "--config", str(config),
             "--dsn", self.dsn],
            stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        wait_until(lambda: self._port() is not None or self.proc.poll() is not None,
                   30, "gridcloud api to listen", (self.log,))
        port = self._port()
        assert port is not None, self.log.read_text()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def _port(self) -> int | None:
        found = re.findall(r"gridcloud api listening on .*port=(\d+)", self.log.read_text())
        return int(found[-1]) if found else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None
        # the next start appends to the same log: forget the old port
        self.log.write_text(self.log.read_text().replace("api listening on", "api listened on"))

    def rss_kib(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    def get(self, path: str, key: str | None = None, **kw: Any) -> requests.Response:
        return self.call("GET", path, key, **kw)

    def call(self, method: str, path: str, key: str | None = None, **kw: Any
             ) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kw)


def _toml(value: Any) -> str:
    """A TOML value for the settings the tests give (bool, number, string, path, list)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def running_api(dsn: str, log: Path, **settings: Any) -> Iterator[ApiProcess]:
    """Start an ApiProcess, yield it, stop it."""
    api = ApiProcess(dsn, log, settings).start()
    try:
        yield api
    finally:
        api.stop()


#: e2's health summary in the seeded world (gridwire.HealthSummary's fields; no radio frame)
E2_HEALTH = {"journal_backlog": 12, "journal_oldest_age": 840, "disk_free_kib": 812344,
             "disk_total_kib": 1015808, "memory_available_kib": 301232,
             "memory_total_kib": 503808, "uptime": 86400, "gridedge_uptime": 3600,
             "restarts": 1}


@dataclass
class World:
    """The standard data set of the API tests and the keys to read it."""

    dsn: str
    admin: str
    reader: str
    #: a read key limited to edge e2
    e2_only: str
    #: readings stored per meter (meters 1 and 2 on e1, meter 3 on e2)
    intervals: int


def seed_world(dsn: str, intervals: int = 96) -> World:
    """Migrate ``dsn`` and store a day of two edges' readings and a few events."""
    migrations.migrate(dsn)
    admit(dsn, "e1")
    admit(dsn, "e2", firmware="1.1.0")
    nxt = ingest_records(dsn, "e1", 1, readings([1, 2], T0, intervals))
    ingest_event(dsn, "e1", nxt, 1, T0 + 100, 1, "magnet")  # tamper
    ingest_event(dsn, "e1", nxt + 1, 2, T0 + 200, 2, "")  # outage
    ingest_records(dsn, "e2", 1, readings([3], T0, intervals))
    # e1's link: three days, the middle one from two serve nodes' flushes
    add_traffic(dsn, [("e1", "2026-11-15", 100, 10), ("e1", "2026-11-16", 200, 20),
                      ("e1", "2026-11-17", 300, 30)])
    add_traffic(dsn, [("e1", "2026-11-16", 5, 1)])
    # e2's latest health summary, as ingest_health_summary() leaves it (the event itself is
    # left out: the event lists of these tests stay as they are; tests/system/
    # test_health_summary.py stores real ones)
    query(dsn, "UPDATE edges SET health = %s::jsonb, health_at = to_timestamp(%s)"
               " WHERE edge_id = 'e2'", (json.dumps(E2_HEALTH), T0 + 600))
    return World(
        dsn,
        admin=keys.create_key(dsn, "admin", ["read", "write", "admin"]),
        reader=keys.create_key(dsn, "reader", ["read"]),
        e2_only=keys.create_key(dsn, "e2-only", ["read"], edges=["e2"]),
        intervals=intervals,
    )
