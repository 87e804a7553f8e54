"""The gridsim command: help, argument errors, a real pty, clean shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gridradio as F
from gridradio import FrameDecoder

PY = sys.executable


def test_help_explains_the_options() -> None:
    """--help describes the port, the speed, the faults and the control commands."""
    out = subprocess.run(
        [PY, "-m", "gridsim.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in (
        "--meters",
        "--port",
        "--speed",
        "--seed",
        "--truth",
        "--corrupt-rate",
        "SIGUSR1",
        "silence",
    ):
        assert word in out


def test_bad_arguments_are_refused_clearly(tmp_path: Path) -> None:
    """Nonsense values and a truth file that exists without --resume give one clear message."""
    bad = subprocess.run(
        [PY, "-m", "gridsim.cli", "--port", str(tmp_path / "p"), "--duration", "soon"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    (tmp_path / "t.sqlite").write_bytes(b"x" * 10)
    exists = subprocess.run(
        [
            PY,
            "-m",
            "gridsim.cli",
            "--port",
            str(tmp_path / "p"),
            "--truth",
            str(tmp_path / "t.sqlite"),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert exists.returncode != 0 and "--resume" in exists.stderr


def test_serves_a_pty_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The port link reaches a raw pty that carries frames; SIGTERM removes it and exits 0."""
    port = tmp_path / "radio"
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "gridsim.cli",
            "--meters",
            "10",
            "--port",
            str(port),
            "--speed",
            "600",
            "--start",
            "2026-01-05",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not port.is_symlink():
            assert time.monotonic() < deadline and proc.poll() is None, "no port link"
            time.sleep(0.05)
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        decoder = FrameDecoder()
        frames: list[F.Frame] = []
        while not any(isinstance(f, F.IntervalReport) for f in frames):
            assert time.monotonic() < deadline, "no interval report on the pty"
            frames += decoder.feed(os.read(fd, 4096))
        os.close(fd)
        assert any(isinstance(f, F.ModuleStatus) for f in frames)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not port.exists() and not port.is_symlink()
        assert "stopped" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
