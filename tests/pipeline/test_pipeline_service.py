"""``gridcloud pipeline`` as operators run it: a config file (checked like the other
commands'), woken by ingest's NOTIFY rather than its polling, a poison record set aside with
its reason while the rest flows, counters in the log, and a clean exit on SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gridcloud import migrations
from gridcloud.config import ConfigError
from gridcloud.pipeline import PipelineConfig, load_pipeline_config

from support.pipeline_data import Fleet, backlog, connect
from support.waiting import wait_until


def test_config_file_and_its_errors(tmp_path: Path) -> None:
    """Keys are read and typed; unknown keys and bad values are refused naming the key."""
    path = tmp_path / "pipeline.toml"
    path.write_text('[pipeline]\nconcurrency = 3\nvoltage_min = 200\n'
                    '[database]\ndsn = "dbname=x"\n')
    config = load_pipeline_config(path).validate()
    assert config.concurrency == 3 and config.voltage_min == 200 and config.connections == 4
    path.write_text("[pipeline]\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match="batchsize"):
        load_pipeline_config(path)
    with pytest.raises(ConfigError, match="voltage_min"):
        PipelineConfig(dsn="x", voltage_min=260).validate()
    with pytest.raises(ConfigError, match="batch_size"):
        PipelineConfig(dsn="x", batch_size=0).validate()


def test_notify_wakes_it_a_poison_record_is_set_aside_and_sigterm_drains(
        module_dsn: str, tmp_path: Path) -> None:
    """With polling every 10 minutes, readings are processed within seconds of their
    commit (NOTIFY); a reading whose charge overflows goes to pipeline_dead_letters with the
    error after 3 attempts and the records after it are processed; SIGTERM exits 0."""
    migrations.migrate(module_dsn)
    cur: Any = connect(module_dsn).cursor()
    fleet = Fleet(edges=2, per_edge=3)
    fleet.setup(cur)
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[pipeline]\npoll_interval = 600\nretry_backoff = 0.05\n'
                      f'report_interval = 0.5\nsweep_interval = 600\n'
                      f'[database]\ndsn = "{module_dsn}"\n')
    log = tmp_path / "pipeline.log"
    proc = subprocess.Popen([sys.executable, "-m", "gridcloud.cli", "pipeline", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            env={**os.environ})
    try:
        wait_until(lambda: "pipeline running" in log.read_text(), 30, "the pipeline starting",
                   logs=(log,))
        fleet.ingest(cur, "pe000", fleet.interval(0, 0, random.Random(1)))
        wait_until(lambda: backlog(cur) == 0, 5, "a NOTIFY waking the pipeline", logs=(log,))
        rows = fleet.interval(0, 1, random.Random(2))
        rows[1] = (rows[1][0], rows[1][1], 2**62, *rows[1][3:])
        fleet.ingest(cur, "pe000", rows)
        fleet.ingest(cur, "pe001", fleet.interval(1, 0, random.Random(3)))
        wait_until(lambda: backlog(cur) == 0, 30, "the poison record set aside", logs=(log,))
        cur.execute("SELECT edge_id, seq, reason, attempts FROM pipeline_dead_letters")
        (edge, seq, reason, attempts), = cur.fetchall()
        assert (edge, seq, attempts) == ("pe000", 5, 3) and "out of range" in reason
        cur.execute("SELECT count(*) FROM meter_state WHERE last_end IS NOT NULL")
        assert cur.fetchone()[0] == 6
        wait_until(lambda: "pipeline counters" in log.read_text(), 10, "a counters line",
                   logs=(log,))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "set 1 record(s) aside after 3 attempts" in text and "dead_letters=1" in text
    assert "Traceback" not in text


def test_cli_refuses_a_missing_database_and_bad_flags(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No DSN, or a flag out of range, is one line on stderr and status 2."""
    from gridcloud import cli

    monkeypatch.delenv("GRIDCLOUD_DSN", raising=False)
    assert cli.main(["pipeline"]) == 2
    assert "missing setting: dsn" in capsys.readouterr().err
    assert cli.main(["pipeline", "--dsn", "dbname=x", "--concurrency", "0"]) == 2
    assert "--concurrency must be positive" in capsys.readouterr().err
