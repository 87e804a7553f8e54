"""JSON log lines: one object a line, with the unit id lifted out so one grep follows a unit;
and ``gridcloud serve --log-format json`` really writes them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gridcloud import logformat
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure


def emitted(fmt: str, emit: object) -> list[str]:
    out = io.StringIO()
    logger = Logger(namespace="gridcloud.test", observer=logformat.observer(out, fmt))
    emit(logger)  # type: ignore[operator]
    return out.getvalue().splitlines()


def test_json_lines_carry_the_unit_and_the_rendered_message() -> None:
    """An event naming the edge (as ``edge`` or ``edge_id``) gets ``unit``; command and rollout
    ids are copied; the message is rendered."""
    lines = emitted("json", lambda log: (
        log.info("edge {edge} connected from {peer}", edge="bbb-0001", peer="203.0.113.7:4011"),
        log.warn("command {command_id} for {edge_id} expired", edge_id="bbb-0002",
                 command_id=42, rollout_id="r-7"),
        log.info("no unit here"),
    ))
    first, second, third = (json.loads(line) for line in lines)
    assert first["unit"] == "bbb-0001" and first["level"] == "info"
    assert first["msg"] == "edge bbb-0001 connected from 203.0.113.7:4011"
    assert first["logger"] == "gridcloud.test" and first["ts"].endswith("+00:00")
    assert (second["unit"], second["command_id"], second["rollout_id"]) == ("bbb-0002", "42", "r-7")
    assert second["level"] == "warn"
    assert "unit" not in third


def test_a_logged_failure_keeps_its_traceback_inside_the_one_line() -> None:
    """A failure with a multi-line traceback is still one line of JSON."""
    try:
        raise ValueError("bad row")
    except ValueError:
        failure = Failure()
    lines = emitted("json", lambda log: log.failure("writing failed", failure,
                                                     level=LogLevel.error, edge="e1"))
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert "ValueError: bad row" in record["error"] and record["unit"] == "e1"


def test_unknown_format_is_refused() -> None:
    """A typo in the format is an error naming the choices."""
    with pytest.raises(ValueError, match="text, json"):
        logformat.observer(io.StringIO(), "logfmt")


def test_gridcloud_serve_logs_json_lines(tmp_path: Path, pg_dsn: str) -> None:
    """``GRIDCLOUD_LOG_FORMAT=json`` makes the real serve command write JSON lines (its start
    and stop); a format that does not exist is refused before anything starts."""
    from gridcloud import migrations
    from gridcloud.pki import PKIDirectory

    from support.edge_harness import Proc
    from support.waiting import wait_until

    folder = PKIDirectory(tmp_path / "pki")
    folder.init()
    folder.server(["cloud.example.net"])
    migrations.migrate(pg_dsn)
    argv = [sys.executable, "-m", "gridcloud.cli", "serve", "--listen",
            "tcp:0:interface=127.0.0.1", "--cert", str(folder.path / "server.pem"),
            "--key", str(folder.path / "server.key"), "--ca", str(folder.path / "ca.pem"),
            "--dsn", pg_dsn]
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GRIDCLOUD_LOG_FORMAT": "yaml"})
    assert bad.returncode == 2 and "GRIDCLOUD_LOG_FORMAT='yaml'" in bad.stderr
    log = tmp_path / "serve.log"
    serve = Proc("serve", argv, log, env={"GRIDCLOUD_LOG_FORMAT": "json"}).start()
    try:
        wait_until(lambda: "gridcloud listening on" in log.read_text(), 30,
                   "gridcloud serve to listen", (log,))
    finally:
        assert serve.stop() == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["msg"].startswith("gridcloud listening on") and r["logger"] ==
               "gridcloud.server" for r in records)
