"""Prometheus metrics and /healthz of ``gridcloud pipeline``: a real process over a migrated
PostgreSQL, scraped over HTTP on its Unix socket after it processed known readings; the
counters move by exactly the records ingested."""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from gridcloud import migrations
from gridcloud.pipeline import load_pipeline_config
from prometheus_client.parser import text_string_to_metric_families

from support.pipeline_data import Fleet, backlog, connect
from support.waiting import wait_until


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP over the Unix socket ``path`` (the endpoint ``unix:PATH`` listens there)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self._path))


def get(path: Path, url: str) -> tuple[int, str]:
    conn = _UnixHTTP(path)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[str, float]:
    """``name{label="v",...}`` -> value, for every sample of an exposition."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_listen_is_read_from_the_pipeline_section(tmp_path: Path) -> None:
    """Off unless set; any Twisted endpoint, as serve's and api's."""
    path = tmp_path / "pipeline.toml"
    path.write_text('[database]\ndsn = "dbname=x"\n')
    assert load_pipeline_config(path).validate().metrics_listen == ""
    path.write_text('[pipeline]\nmetrics_listen = "tcp:9501:interface=127.0.0.1"\n'
                    '[database]\ndsn = "dbname=x"\n')
    assert load_pipeline_config(path).metrics_listen == "tcp:9501:interface=127.0.0.1"


def test_pipeline_process_counts_each_stage_and_answers_healthz(
        module_dsn: str, tmp_path: Path) -> None:
    """2 edges x 3 meters: 12 readings, then 6 more; the scraped readings counter says 12,
    then 18; batches and their latency histogram agree, nothing was retried or set aside,
    nothing is left claimed, the pool is the configured size and up; /healthz is 200."""
    migrations.migrate(module_dsn)
    cur: Any = connect(module_dsn).cursor()
    fleet = Fleet(edges=2, per_edge=3)
    fleet.setup(cur)
    sock = tmp_path / "metrics.sock"
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[pipeline]\nconcurrency = 2\npoll_interval = 600\n'
                      f'sweep_interval = 600\nmetrics_listen = "unix:{sock}"\n'
                      f'[database]\ndsn = "{module_dsn}"\n')
    log = tmp_path / "pipeline.log"
    proc = subprocess.Popen([sys.executable, "-m", "gridcloud.cli", "pipeline", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            env={**os.environ})
    try:
        wait_until(lambda: "pipeline running" in log.read_text(), 30, "the pipeline starting",
                   logs=(log,))
        assert get(sock, "/healthz") == (200, "ok\n")
        before = samples(get(sock, "/metrics")[1])
        assert before['gridcloud_pipeline_records_total{stage="readings"}'] == 0
        assert before["gridcloud_pipeline_batches_total"] == 0

        rng = random.Random(7)
        for k in range(2):
            for e, edge in enumerate(fleet.edge_ids()):
                fleet.ingest(cur, edge, fleet.interval(e, k, rng))
        wait_until(lambda: backlog(cur) == 0, 10, "12 readings processed", logs=(log,))
        first = samples(get(sock, "/metrics")[1])
        assert first['gridcloud_pipeline_records_total{stage="readings"}'] == 12
        cur.execute("SELECT count(*) FROM meter_state WHERE last_end IS NOT NULL")
        assert cur.fetchone()[0] == 6

        fleet.ingest(cur, "pe001", fleet.interval(1, 2, rng))
        fleet.ingest(cur, "pe000", fleet.interval(0, 2, rng))
        wait_until(lambda: backlog(cur) == 0, 10, "6 more readings processed", logs=(log,))
        got = samples(get(sock, "/metrics")[1])
        assert got['gridcloud_pipeline_records_total{stage="readings"}'] == 18
        batches = got["gridcloud_pipeline_batches_total"]
        assert first["gridcloud_pipeline_batches_total"] < batches <= 6  # one per ingest at most
        assert got["gridcloud_pipeline_batch_seconds_count"] == batches
        assert got["gridcloud_pipeline_batch_seconds_sum"] > 0
        assert got['gridcloud_pipeline_transaction_seconds_total{kind="process"}'] > 0
        for reason in ("conflict", "database", "failed"):
            assert got[f'gridcloud_pipeline_retries_total{{reason="{reason}"}}'] == 0
        assert got["gridcloud_pipeline_records_set_aside_total"] == 0
        assert got["gridcloud_pipeline_claimed_records"] == 0
        assert got["gridcloud_pipeline_claimed_edges"] == 0
        # the credit stage's ledger rows (energy and standing charges; top-ups are not its)
        cur.execute("SELECT count(*) FROM ledger WHERE kind <> 'topup'")
        assert got['gridcloud_pipeline_records_total{stage="ledger_rows"}'] == cur.fetchone()[0]
        assert got["gridcloud_pipeline_db_pool_size"] == 3  # concurrency + 1
        assert got["gridcloud_pipeline_db_up"] == 1
        assert 0 <= got["gridcloud_pipeline_db_pool_busy"] <= 3

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "metrics and health on" in text and "Traceback" not in text
