"""CSV export: a large range streams from a server-side cursor with the API's memory flat,
also while the client reads slowly (the export waits for the socket instead of buffering)."""

from __future__ import annotations

import csv
import datetime
import io
import time
from pathlib import Path

from gridcloud import migrations
from gridcloud.api import keys

from support.api_harness import T0, admit, ingest_records, readings, running_api

METERS = 300
INTERVALS = 1000  # 300,000 readings, about 20 MB of CSV


def test_a_large_csv_export_keeps_the_api_memory_flat(pg_dsn: str, tmp_path: Path) -> None:
    migrations.migrate(pg_dsn)
    admit(pg_dsn, "big")
    ingest_records(pg_dsn, "big", 1, readings(range(1, METERS + 1), T0, INTERVALS))
    key = keys.create_key(pg_dsn, "csv", ["read"])
    for api in running_api(pg_dsn, tmp_path / "api.log"):
        csv_headers = {"Accept": "text/csv"}
        small = api.get("/v1/meters/1/readings", key, headers=csv_headers)  # warm up
        assert small.status_code == 200 and small.headers["content-type"].startswith("text/csv")
        assert len(small.text.splitlines()) == INTERVALS + 1
        baseline = api.rss_kib()

        r = api.get("/v1/edges/big/readings", key, headers=csv_headers, stream=True)
        assert r.status_code == 200
        peak = baseline
        size = 0
        lines = 0
        first = b""
        for n, chunk in enumerate(r.iter_content(64 * 1024)):
            if len(first) < 4096:
                first += chunk
            if n == 16:
                time.sleep(1.5)  # a slow client: the rest must wait in PostgreSQL, not here
            size += len(chunk)
            lines += chunk.count(b"\n")
            if n % 16 == 0:
                peak = max(peak, api.rss_kib())
        assert lines == METERS * INTERVALS + 1
        assert size > 15_000_000
        assert (peak - baseline) < 10 * 1024, f"RSS grew {peak - baseline} KiB"
        header, row = list(csv.reader(io.StringIO(first[:4096].decode())))[:2]
        assert header[:4] == ["edge_id", "seq", "meter_id", "interval_end"]
        assert row[:4] == ["big", "1", "1", iso(T0)]
        assert row[6:9] == ["230.1", "1.500", "0.950"]  # V, A, power factor as stored


def iso(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
