"""The unit's health summary: system numbers read from /proc and the data partition, and the
reporter journalling a HEALTH_SUMMARY event every interval (task.Clock, a real journal)."""

from __future__ import annotations

from pathlib import Path

from gridedge.journal import Event
from gridedge.summary import HealthReporter, system_numbers
from gridwire import AlarmKind, HealthSummary
from twisted.internet import task

from support.journal_helpers import open_journal


def test_system_numbers_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:  503808 kB\nMemFree: 1 kB\n"
                                  "MemAvailable:  301232 kB\n")
    (proc / "uptime").write_text("86400.52 12345.00\n")
    numbers = system_numbers(tmp_path, proc)
    assert numbers["memory_total_kib"] == 503808 and numbers["memory_available_kib"] == 301232
    assert numbers["uptime"] == 86400
    assert 0 < numbers["disk_free_kib"] <= numbers["disk_total_kib"]


def test_unreadable_numbers_are_left_out(tmp_path: Path) -> None:
    assert system_numbers(tmp_path / "missing", tmp_path / "no-proc") == {}


def test_reporter_journals_a_summary_every_interval(tmp_path: Path) -> None:
    """First after min(10 s, interval), then every interval, as events of the unit (meter 0)."""
    journal = open_journal(tmp_path)
    clock = task.Clock()
    clock.advance(1_800_000_000)
    count = iter(range(100))
    reporter = HealthReporter(journal, lambda: HealthSummary(journal_backlog=next(count)),
                              clock, interval=60.0)
    reporter.startService()
    clock.advance(9.9)
    assert journal.pending == 0
    clock.advance(0.1)
    clock.advance(60)
    clock.advance(60)
    reporter.stopService()
    clock.advance(600)
    entries = journal.read(1, 10)
    assert [e.kind for _, e in entries if isinstance(e, Event)] == [AlarmKind.HEALTH_SUMMARY] * 3
    assert [e.detail for _, e in entries] == ["b=0", "b=1", "b=2"]  # type: ignore[union-attr]
    assert all(e.meter_id == 0 for _, e in entries)  # type: ignore[union-attr]
    assert reporter.reported == 3


def test_a_closed_journal_skips_a_summary(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    journal.close()
    clock = task.Clock()
    reporter = HealthReporter(journal, HealthSummary, clock, interval=5.0)
    reporter.startService()
    clock.advance(5)
    assert reporter.reported == 0
    reporter.stopService()
