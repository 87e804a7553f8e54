"""The numbers on the dashboard, gathered from the unit's parts and the operating system.

Why a module of its own: the page, the live view and the diagnostics bundle show the same
numbers, and each must cost little on a BeagleBone, so they are gathered in one place, with the
slow ones (per-day traffic and the oldest unsent record, both SQLite reads) cached for a few
seconds.  The unit is seen through :class:`UnitView`, a Protocol that gridedge.services.Unit
satisfies, so the web package never imports the composition root.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import configparser
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gridwire import Flags, IntervalRecord

from gridedge.config import Config
from gridedge.firmware import Agent
from gridedge.journal import Journal, JournalError
from gridedge.radio import MeterStatus, RadioLink
from gridedge.uplink.service import UplinkStatus
from gridedge.uplink.traffic import Traffic, TrafficError

from .history import History

__all__ = ["Dashboard", "UnitView", "meter_alarms", "meter_row", "other_slot_version"]

#: A meter not heard for this long (two intervals and a margin) is shown as silent.
SILENT_AFTER = 2 * 900 + 300


class UnitView(Protocol):
    """What the page reads of the running unit (gridedge.services.Unit provides it)."""

    config: Config
    journal: Journal
    traffic: Traffic
    started_at: float
    #: the update agent: the page's bundle upload installs through it, and shows its state
    firmware: Agent

    def radio_link(self) -> RadioLink | None: ...

    def uplink_status(self) -> UplinkStatus | None: ...

    def problems(self) -> list[str]: ...


def other_slot_version(status_file: Path, running_slot: str) -> str:
    """The other RAUC slot's bundle version from RAUC's status file, or "unknown"."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(status_file.read_text(errors="replace"))
    except (OSError, configparser.Error):
        return "unknown"
    names = {"A": "slot.rootfs.0", "B": "slot.rootfs.1"}
    other = names.get("B" if running_slot == "A" else "A" if running_slot == "B" else "", "")
    if other and parser.has_option(other, "bundle.version"):
        return parser.get(other, "bundle.version")
    return "unknown"


def meter_alarms(status: MeterStatus | None, last: IntervalRecord | None, now: float) -> list[str]:
    out = []
    flags = last.flags if last is not None else 0
    if flags & Flags.TAMPER:
        out.append("tamper")
    if flags & Flags.OUTAGE:
        out.append("outage")
    if status is not None and (status.last_seen is None or now - status.last_seen > SILENT_AFTER):
        out.append("silent")
    if status is not None and not status.joined:
        out.append("left mesh")
    return out


def meter_row(meter_id: int, status: MeterStatus | None, history: History,
              now: float) -> dict[str, Any]:
    """One line of the meters table (and of the live view's updates)."""
    last = history.last(meter_id) or (status.last_report if status else None)
    relay = None if status is None else status.relay_open
    return {
        "id": meter_id,
        "end": last.interval_end if last else None,
        "wh": last.energy_wh if last else None,
        "w": last.max_demand_w if last else None,
        "relay": "unknown" if relay is None else "open" if relay else "closed",
        "rssi": status.rssi if status else None,
        "hops": status.hops if status else None,
        "alarms": meter_alarms(status, last, now),
    }


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def rss_bytes() -> int:
    """This process's resident set size now (/proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Dashboard:
    """The dashboard's numbers; :meth:`numbers` is called once per live tick and per page."""

    def __init__(self, unit: UnitView, history: History, clock: Callable[[], float],
                 slow_every: float = 5.0) -> None:
        self.unit = unit
        self.history = history
        self.clock = clock
        self.slow_every = slow_every
        self._slow_at = -1e18
        self._slow: dict[str, Any] = {}
        self._cpu = (time.monotonic(), sum(os.times()[:2]))
        self._cpu_share = 0.0

    def numbers(self) -> dict[str, Any]:
        now = self.clock()
        unit = self.unit
        up = unit.uplink_status()
        stats = unit.journal.stats() if unit.journal.is_open else None
        link = unit.radio_link()
        meters = link.meters() if link is not None else []
        heard = sum(1 for m in meters
                    if m.last_seen is not None and now - m.last_seen <= SILENT_AFTER)
        if now - self._slow_at >= self.slow_every:
            self._slow = self._slow_numbers(now)
            self._slow_at = now
        alarms = list(self._slow.get("problems", []))
        alarmed = 0
        for m in meters:
            if meter_alarms(m, self.history.last(m.meter_id) or m.last_report, now):
                alarmed += 1
        if alarmed:
            alarms.append(f"{alarmed} meter(s) with alarms")
        try:
            disk = os.statvfs(unit.config.data_dir)
            disk_free, disk_total = disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
        except OSError:
            disk_free = disk_total = 0
        mem = _meminfo()
        edge = unit.config.edge
        return {
            "cloud": "connected" if up is not None and up.connected else "offline",
            "last_contact": up.last_connected_at if up is not None else None,
            **{k: v for k, v in self._slow.items() if k != "problems"},
            "backlog": stats.pending if stats is not None else None,
            "journal_bytes": stats.size_bytes if stats is not None else None,
            "meters_heard": heard,
            "meters_total": len(meters),
            "alarms": alarms,
            "firmware": edge.firmware_version,
            "slot": edge.boot_slot,
            "other_slot": self._slow.get("other_slot", "unknown"),
            "uptime": now - unit.started_at,
            "disk_free": disk_free,
            "disk_total": disk_total,
            "mem_available": mem.get("MemAvailable", 0),
            "mem_total": mem.get("MemTotal", 0),
            "rss": rss_bytes(),
            "cpu": self._cpu_percent(),
            "load": os.getloadavg()[0],
        }

    def _slow_numbers(self, now: float) -> dict[str, Any]:
        unit = self.unit
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        try:
            days = unit.traffic.per_day()
        except TrafficError:
            days = {}
        today = sum(days.get(day, (0, 0)))
        month = sum(s + r for d, (s, r) in days.items() if d[:7] == day[:7])
        oldest = None
        journal = unit.journal
        first = journal.first_pending_seq if journal.is_open else None
        if first is not None:
            try:
                entries = journal.read(first, 1)
            except JournalError:
                entries = []
            if entries:
                entry = entries[0][1]
                oldest = getattr(entry, "interval_end", None) or getattr(entry, "time", None)
        return {
            "problems": unit.problems(),
            "bytes_today": today,
            "bytes_month": month,
            "oldest_unsent": oldest,
            "other_slot": other_slot_version(unit.config.web.rauc_status,
                                             unit.config.edge.boot_slot),
        }

    def _cpu_percent(self) -> float:
        """This process's CPU share since the last call, percent of one core."""
        wall, cpu = time.monotonic(), sum(os.times()[:2])
        w0, c0 = self._cpu
        if wall - w0 >= 1.0:
            self._cpu_share = 100.0 * (cpu - c0) / (wall - w0)
            self._cpu = (wall, cpu)
        return round(self._cpu_share, 1)
