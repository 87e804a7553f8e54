"""`gridedge` as an operator runs it: --help, a bad configuration (exit 2, names the key),
`run` with the supervision tree answering `health` (exit 1 with the reasons while the
cloud is unreachable), `traffic`, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from support.waiting import wait_until

BIN = Path(sys.executable).parent / "gridedge"


def gridedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands() -> None:
    """--help names run, health and traffic."""
    out = gridedge("--help")
    assert out.returncode == 0
    for word in ("run", "health", "traffic", "COMMAND"):
        assert word in out.stdout


def test_bad_config_exit_2_with_the_key(tmp_path: Path) -> None:
    """A typo in the file stops the start with exit 2 and a message naming the key."""
    cfg = tmp_path / "g.toml"
    cfg.write_text('data_dir = "d"\n[uplink]\nhost = "h"\nport = 7400\nheartbeet = 3\n')
    out = gridedge("run", "--config", str(cfg))
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "heartbeet" in out.stderr


def test_run_health_and_sigterm(tmp_path: Path) -> None:
    """run starts the tree; health is unhealthy with reasons (no certificate, no cloud);
    the journal keeps running; SIGTERM stops with exit 0 and a log of what happened."""
    data = tmp_path / "data"
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'data_dir = "{data}"\n[uplink]\nhost = "127.0.0.1"\nport = 9\n'
                   'backoff_initial = 0.1\n')
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN), "run", "--config", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (data / "health.sock").exists(), 30, "the health socket", (log,))
        # The uplink's first attempt has failed once health can say why.
        wait_until(lambda: "edge.pem is missing" in gridedge("health", "--config", str(cfg)).stdout,
                   30, "health to report the missing certificate", (log,))
        health = gridedge("health", "--config", str(cfg))
        assert health.returncode == 1, health.stdout + log.read_text()
        assert "UNHEALTHY" in health.stdout
        assert "edge.pem is missing" in health.stdout
        assert "never connected" in health.stdout
        running = gridedge("health", "--running", "--config", str(cfg))
        assert running.returncode == 1 and "NOT RUNNING" in running.stdout, running.stdout
        assert "uplink is not running" in running.stdout
        assert "never connected" not in running.stdout
        js = gridedge("health", "--json", "--config", str(cfg))
        assert '"journal_open": true' in js.stdout
        assert gridedge("traffic", "--config", str(cfg)).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
    text = log.read_text()
    assert "journal" in text and "uplink failed" in text and "gridedge stopped" in text


def test_repeated_sigterm_stops_once_without_traceback(tmp_path: Path) -> None:
    """A second SIGTERM during shutdown (as BusyBox init sends at reboot) is harmless."""
    data = tmp_path / "data"
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'data_dir = "{data}"\n[uplink]\nhost = "127.0.0.1"\nport = 9\n')
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN), "run", "--config", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (data / "health.sock").exists(), 30, "the health socket", (log,))
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "gridedge stopping" in log.read_text() or proc.poll() is not None, 30,
                   "the shutdown to begin", (log,))
        for _ in range(2):
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "ReactorNotRunning" not in text, text
    assert text.count("gridedge stopping") == 1 and "gridedge stopped" in text


def test_health_without_a_running_unit(tmp_path: Path) -> None:
    """health exits 1 and says nobody answers when gridedge is not running."""
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n[uplink]\nhost = "h"\nport = 1\n')
    out = gridedge("health", "--config", str(cfg))
    assert out.returncode == 1 and "not answering" in out.stdout
