"""The unit's health summary for the cloud: a few numbers, journalled every ``[health]
summary_interval`` as an event of kind HEALTH_SUMMARY (0x8006).

Why journalled events (docs/protocol.md, "Health summary"): they ride the
uplink's exactly-once path with no new message type, arrive even when the link
was down at the moment they were taken (late, but then the cloud knows when),
and a connection lasting days still reports every interval, which a field of
Hello could not.  About 90 bytes a frame, hourly by default: the link is metered.

The numbers come from the unit (``collect``, :meth:`gridedge.services.Unit.health_summary`)
and from the system (:func:`system_numbers`: the data partition, /proc/meminfo,
/proc/uptime).

Tests: tests/edge/test_summary.py, tests/system/test_health_summary.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridwire import AlarmKind, HealthSummary
from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gridedge.journal import Event, Journal, JournalError

#: Seconds after start before the first summary (the journal and uplink come up first).
FIRST_AFTER = 10.0


def system_numbers(data_dir: Path, proc: Path = Path("/proc")) -> dict[str, int]:
    """Disk (KiB free/total of ``data_dir``), memory (KiB available/total) and the unit's
    uptime (s), as far as they can be read; a value that cannot be read is left out."""
    out: dict[str, int] = {}
    try:
        disk = os.statvfs(data_dir)
        out["disk_free_kib"] = disk.f_bavail * disk.f_frsize // 1024
        out["disk_total_kib"] = disk.f_blocks * disk.f_frsize // 1024
    except OSError:
        pass
    try:
        mem = {}
        for line in (proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemAvailable", "MemTotal"):
                mem[key] = int(rest.split()[0])  # kB
        out["memory_available_kib"] = mem["MemAvailable"]
        out["memory_total_kib"] = mem["MemTotal"]
    except (OSError, ValueError, IndexError, KeyError):
        pass
    with contextlib.suppress(OSError, ValueError, IndexError):
        out["uptime"] = int(float((proc / "uptime").read_text().split()[0]))
    return out


class HealthReporter(service.Service):
    """Journals ``collect()`` as a HEALTH_SUMMARY event every ``interval`` seconds."""

    log = Logger()

    def __init__(self, journal: Journal, collect: Callable[[], HealthSummary], clock: Any,
                 interval: float, first_after: float | None = None) -> None:
        self._journal = journal
        self._collect = collect
        self._clock = clock
        self._interval = interval
        self._first_after = min(FIRST_AFTER, interval) if first_after is None else first_after
        self._first: Any = None
        self._loop: LoopingCall | None = None
        #: summaries journalled since start
        self.reported = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._first = self._clock.callLater(self._first_after, self._start_loop)

    def _start_loop(self) -> None:
        self._first = None
        self._loop = LoopingCall(self.report)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def report(self) -> None:
        """Journal one summary now; a journal that is down skips this one (the next comes)."""
        try:
            detail = self._collect().to_detail()
            self._journal.append_event(Event(0, int(self._clock.seconds()),
                                             AlarmKind.HEALTH_SUMMARY, detail))
        except JournalError as exc:
            self.log.warn("health summary not journalled: {error}", error=str(exc))
            return
        self.reported += 1
