"""Helpers for the radio tests: gridsim and the edge's radio link as processes on a real pty.

``GridsimProcess`` runs the ``gridsim`` command; ``EdgeProcess`` runs
``python -m gridedge.radio`` (the edge's RadioService with an SQLite sink) and
talks to it over its stdin/stdout command interface.  Both are killed at the
end of the test whatever happens.  ``assert_exactly_once`` and
``wait_until_delivered`` compare the edge's sink with gridsim's ground truth.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gridsim.truth import GroundTruth

from support.waiting import wait_until

PY = sys.executable
START = "2026-01-05T00:00:00Z"
START_TS = 1767571200

#: Edge settings that suit a simulation running ~2000 times faster than real time.
FAST_EDGE = [
    "--synchronous",
    "NORMAL",
    "--poll-rate",
    "500",
    "--poll-burst",
    "50",
    "--polls-in-flight",
    "32",
    "--poll-timeout",
    "2",
    "--backoff",
    "0.5",
    "--scan-every",
    "0.5",
    "--relay-timeout",
    "2",
    "--reopen-max",
    "0.5",
    "--stats-every",
    "5",
]


class _Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self._pending = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_json(self, timeout: float) -> dict[str, Any]:
        """The next JSON line on stdout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not sel.select(0)):
                    raise AssertionError(f"no answer from {self.args[1:3]}; log:\n{self.log()}")
                if sel.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        raise AssertionError(f"{self.args[1:3]} closed stdout; log:\n{self.log()}")
                    self._pending += chunk
        finally:
            sel.close()
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(
                    f"{self.args[1:3]} ignored SIGTERM; log:\n{self.log()}"
                ) from None
        return self.proc.returncode

    def stop(self) -> None:
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self._log.close()


class GridsimProcess(_Proc):
    pass


class EdgeProcess(_Proc):
    def __init__(self, args: list[str], log: Path, records: Path) -> None:
        super().__init__(args, log)
        self.records = records

    def command(self, line: str, timeout: float = 20) -> dict[str, Any]:
        self.send(line)
        return self.read_json(timeout)


def sink_rows(path: Path) -> list[tuple[int, ...]]:
    """Every record row the edge stored, duplicates included (seq order)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(
            db.execute(
                "SELECT meter_id, interval_end, energy_wh, max_demand_w, voltage_dv, current_ma,"
                " power_factor, flags FROM records ORDER BY seq"
            )
        )
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def sink_count(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


class Rig:
    """Starts gridsim and edge processes in one test directory and cleans them up."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = tmp / "radio"
        self.truth = tmp / "truth.sqlite"
        self.records = tmp / "records.sqlite"
        self.procs: list[_Proc] = []

    def gridsim(
        self, *args: str, meters: int, speed: float, resume: bool = False
    ) -> GridsimProcess:
        argv = [
            PY,
            "-m",
            "gridsim.cli",
            "--meters",
            str(meters),
            "--port",
            str(self.port),
            "--speed",
            str(speed),
            "--start",
            START,
            "--truth",
            str(self.truth),
            "--log-every",
            "5",
            *args,
        ]
        if resume:
            argv.append("--resume")
        proc = GridsimProcess(argv, self.tmp / "gridsim.log")
        self.procs.append(proc)
        return proc

    def edge(self, *args: str) -> EdgeProcess:
        argv = [
            PY,
            "-m",
            "gridedge.radio",
            "--port",
            str(self.port),
            "--records",
            str(self.records),
            *FAST_EDGE,
            *args,
        ]
        proc = EdgeProcess(argv, self.tmp / "edge.log", self.records)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


def assert_exactly_once(rig: Rig) -> None:
    """The edge's sink holds every ground-truth record once, unchanged, and nothing else."""
    rows = sink_rows(rig.records)
    counts = collections.Counter((r[0], r[1]) for r in rows)
    repeated = [k for k, n in counts.items() if n > 1]
    assert not repeated, f"{len(repeated)} records delivered twice, e.g. {repeated[:3]}"
    with GroundTruth(rig.truth) as truth:
        expected = {(r.meter_id, r.interval_end): tuple(r) for r in truth.records()}
    got = {(r[0], r[1]): r for r in rows}
    missing = expected.keys() - got.keys()
    extra = got.keys() - expected.keys()
    assert not missing, f"{len(missing)} records never reached the sink, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} records the meters never produced, e.g. {sorted(extra)[:3]}"
    wrong = [k for k in expected if expected[k] != got[k]]
    assert not wrong, f"{len(wrong)} records differ from the ground truth, e.g. {wrong[:3]}"


def truth_count(rig: Rig) -> int:
    """Records gridsim has produced so far (0 before it created its ground truth)."""
    if not rig.truth.exists():
        return 0
    with GroundTruth(rig.truth) as truth:
        return truth.count()


def wait_until_delivered(rig: Rig, timeout: float) -> int:
    """Wait until gridsim finished and the sink has as many records; returns that count."""
    def done() -> bool:
        if not rig.truth.exists():
            return False
        with GroundTruth(rig.truth) as truth:
            return truth.is_complete() and sink_count(rig.records) >= truth.count()

    wait_until(done, timeout, "every ground-truth record to reach the edge's sink", interval=0.5)
    with GroundTruth(rig.truth) as truth:
        return truth.count()
