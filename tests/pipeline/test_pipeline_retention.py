"""Bounded growth (migration 0012's pipeline_trim(), run by `gridcloud pipeline`'s sweeper):
old feed_log rows, alarms cleared long ago and per-edge interval demand far behind the edge's
newest go, a bounded number per call; open alarms, recent rows and the rest stay; the real
service trims as it sweeps and counts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gridcloud import migrations
from gridcloud.config import ConfigError
from gridcloud.pipeline import PipelineConfig

from support.pipeline_data import Fleet, connect
from support.waiting import wait_until


@pytest.fixture
def db(module_dsn: str) -> Any:
    migrations.migrate(module_dsn)
    conn = connect(module_dsn)
    cur = conn.cursor()
    cur.execute("TRUNCATE edges, alarms, feed_log, edge_demand, energy_edge CASCADE")
    Fleet(edges=1, per_edge=1).setup(cur, prepaid=False)
    # 30 feed rows 10 days old, 5 from today
    cur.execute("INSERT INTO feed_log (edge_id, first_seq, last_seq, created_at) "
                "SELECT 'pe000', i, i, now() - interval '10 days' FROM generate_series(1, 30) i")
    cur.execute("INSERT INTO feed_log (edge_id, first_seq, last_seq) "
                "SELECT 'pe000', i, i FROM generate_series(31, 35) i")
    # alarms: 12 cleared 100 days ago, 1 cleared yesterday, 1 raised 200 days ago still open
    cur.execute("INSERT INTO alarms (kind, edge_id, meter_id, raised_at, cleared_at, evidence) "
                "SELECT 'tamper', 'pe000', i, now() - interval '101 days', "
                "now() - interval '100 days', '{}' FROM generate_series(1, 12) i")
    cur.execute("INSERT INTO alarms (kind, edge_id, meter_id, raised_at, cleared_at, evidence) "
                "VALUES ('tamper', 'pe000', 100, now() - interval '2 days', "
                "now() - interval '1 day', '{}'), "
                "('outage', 'pe000', 101, now() - interval '200 days', NULL, '{}')")
    # 100 days of one interval a day (the edge's data ends 2025-12-01), and an energy row
    cur.execute("INSERT INTO edge_demand SELECT 'pe000', timestamptz '2025-12-01' - i * "
                "interval '1 day', 1000 FROM generate_series(0, 99) i")
    cur.execute("INSERT INTO energy_edge VALUES ('pe000', 'day', '2025-11-30', 1, 1000, 1)")
    yield cur
    conn.close()


def counts(cur: Any) -> tuple[int, int, int]:
    cur.execute("SELECT (SELECT count(*) FROM feed_log), (SELECT count(*) FROM alarms), "
                "(SELECT count(*) FROM edge_demand)")
    (f, a, d), = cur.fetchall()
    return int(f), int(a), int(d)


def test_trim_deletes_old_rows_a_bounded_number_at_a_time(db: Any) -> None:
    base_feed, base_alarms, _ = counts(db)
    db.execute("SELECT * FROM pipeline_trim(7, 90, 62, 10)")
    assert db.fetchall() == [(10, 10, 10)]  # at most 10 of each per call
    db.execute("SELECT * FROM pipeline_trim(7, 90, 62, 10)")
    assert db.fetchall() == [(10, 2, 10)]
    for _ in range(5):
        db.execute("SELECT * FROM pipeline_trim(7, 90, 62, 10)")
    assert counts(db) == (base_feed - 30, base_alarms - 12, 63)  # days 0..62 behind the newest
    db.execute("SELECT * FROM pipeline_trim(7, 90, 62, 10)")
    assert db.fetchall() == [(0, 0, 0)]
    db.execute("SELECT count(*) FROM alarms WHERE cleared_at IS NULL AND meter_id = 101")
    assert db.fetchone()[0] == 1  # open alarms are never trimmed, however old
    db.execute("SELECT min(first_seq) FROM feed_log WHERE edge_id = 'pe000' AND first_seq > 0")
    assert db.fetchone()[0] == 31


def test_zero_days_keeps_a_table_whole(db: Any) -> None:
    before = counts(db)
    db.execute("SELECT * FROM pipeline_trim(0, 0, 0, 1000)")
    assert db.fetchall() == [(0, 0, 0)] and counts(db) == before


def test_config_keeps_alarms_at_least_as_long_as_the_feed() -> None:
    PipelineConfig(dsn="x", feed_days=7, alarm_days=7).validate()
    PipelineConfig(dsn="x", feed_days=0, alarm_days=0).validate()
    with pytest.raises(ConfigError, match="alarm_days"):
        PipelineConfig(dsn="x", feed_days=30, alarm_days=7).validate()
    with pytest.raises(ConfigError, match="alarm_days"):
        PipelineConfig(dsn="x", feed_days=0, alarm_days=7).validate()
    with pytest.raises(ConfigError, match="trim_batch"):
        PipelineConfig(dsn="x", trim_batch=0).validate()


def test_the_service_trims_as_it_sweeps(db: Any, module_dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[pipeline]\nsweep_interval = 0.2\nreport_interval = 0.2\n'
                      f'trim_batch = 7\n[database]\ndsn = "{module_dsn}"\n')
    log = tmp_path / "pipeline.log"
    proc = subprocess.Popen([sys.executable, "-m", "gridcloud.cli", "pipeline", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            env={**os.environ})
    try:
        wait_until(lambda: "trimmed_feed=30" in log.read_text(), 30, "the old feed rows trimmed",
                   logs=(log,))
        wait_until(lambda: "trimmed_alarms=12" in log.read_text()
                   and "trimmed_demand=37" in log.read_text(), 30, "alarms and demand trimmed",
                   logs=(log,))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()
