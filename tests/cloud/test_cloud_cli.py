"""`gridcloud serve` as an operator runs it: a real process, a config file, SIGTERM to stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from gridcloud import migrations
from gridcloud.cli import main
from gridedge import loadgen

from support.cloud_harness import CloudPKI, hello, within


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, cloud_pki: CloudPKI, dsn: str, port: int) -> Path:
    folder = cloud_pki.folder.path
    path.write_text(
        "[server]\n"
        f'listen = "tcp:{port}:interface=127.0.0.1"\n'
        f'cert = "{folder / "server.pem"}"\nkey = "{folder / "server.key"}"\n'
        f'ca = "{folder / "ca.pem"}"\n'
        f'[database]\ndsn = "{dsn}"\npool_size = 1\n'
    )
    return path


def wait_listening(port: int, proc: subprocess.Popen[str], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gridcloud serve did not listen")


@pytest_twisted.ensureDeferred
async def test_serve_accepts_an_edge_and_stops_cleanly_on_sigterm(
    cloud_pki: CloudPKI, pg_dsn: str, tmp_path: Path
) -> None:
    """`gridcloud serve --config F --migrate` migrates, welcomes an edge, and exits 0 on SIGTERM."""
    port = free_port()
    config = write_config(tmp_path / "cloud.toml", cloud_pki, pg_dsn, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridcloud.cli", "serve", "--config", str(config), "--migrate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        tls = cloud_pki.client_tls(cloud_pki.edge("edge-cli"))
        client, _ = await loadgen.connect(reactor(), f"tcp:127.0.0.1:{port}", tls, hello())
        assert (await within(reactor(), client.welcome, 10)).last_acked_seq == 0
        client.transport.loseConnection()
        await within(reactor(), client.lost, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "gridcloud listening on" in err
    assert "edge edge-cli connected from 127.0.0.1" in err
    assert migrations.pending(pg_dsn) == []


def test_serve_refuses_to_start_without_what_it_needs(
    cloud_pki: CloudPKI, pg_dsn: str, tmp_path: Path, capsys: Any
) -> None:
    """Missing settings or an unmigrated database: exit 2 with a one-line reason, nothing served."""
    assert main(["serve", "--dsn", pg_dsn]) == 2
    assert "missing setting: cert" in capsys.readouterr().err
    config = write_config(tmp_path / "cloud.toml", cloud_pki, pg_dsn, free_port())
    assert main(["serve", "--config", str(config)]) == 2
    assert "run 'gridcloud migrate' first" in capsys.readouterr().err
    assert main(["migrate", "--dsn", "host=127.0.0.1 port=1 dbname=none connect_timeout=2"]) == 2
    assert "Connection refused" in capsys.readouterr().err
