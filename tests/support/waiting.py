"""Waiting on a condition with a deadline: the one way a test synchronises with a process.

A fixed sleep either wastes time or, on a loaded machine, is too short; ``wait_until`` polls
the condition and fails with what it waited for (and the tails of the logs that explain why).

Tests: used throughout tests/system, tests/radio, tests/edge (a bug shows up there).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               logs: tuple[Path, ...] = (), interval: float = 0.1) -> None:
    """Poll ``check`` until true; on timeout fail with ``what`` and the tails of ``logs``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}\n" + _tails(logs))
        time.sleep(interval)  # the polling period, not a synchronisation


def _tails(logs: tuple[Path, ...]) -> str:
    tails = []
    for log in logs:
        with contextlib.suppress(OSError):
            tails.append(f"--- {log.name} (tail) ---\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(tails)
