"""The link's traffic counters: summed per UTC day, written by flush and readable by a second
reader, kept across a failed write, and read from a unit's existing journal file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gridedge.journal import Journal
from gridedge.uplink.traffic import Traffic

DAY = 86400.0


def test_counts_per_day_persist_after_flush(tmp_path: Path) -> None:
    """Counts are summed per UTC day and, once flushed, another reader sees them."""
    now = [DAY * 10 + 5]
    traffic = Traffic(tmp_path / "journal.db", clock=lambda: now[0])
    traffic.count(sent=100, received=7)
    traffic.count(sent=1)
    now[0] += DAY
    traffic.count(received=3)
    expected = {"1970-01-11": (101, 7), "1970-01-12": (0, 3)}
    assert traffic.per_day() == expected
    assert Traffic(tmp_path / "journal.db").per_day() == {}
    traffic.flush()
    traffic.count(sent=5)
    traffic.flush()
    assert Traffic(tmp_path / "journal.db").per_day() == {
        "1970-01-11": (101, 7), "1970-01-12": (5, 3)}


def test_failed_write_keeps_counts_for_the_next_flush(tmp_path: Path) -> None:
    """A flush that cannot write (here: the folder is a file) loses nothing."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    traffic = Traffic(blocker / "journal.db", clock=lambda: DAY)
    traffic.count(sent=9, received=4)
    traffic.flush()
    assert traffic.per_day() == {"1970-01-02": (9, 4)}


def test_shares_the_journal_file_and_reads_existing_units(tmp_path: Path) -> None:
    """The counters live beside the journal in one file, and a table written by an earlier
    gridedge (same name and columns) is read as it is."""
    path = tmp_path / "journal.db"
    journal = Journal(path, max_bytes=1 << 20)
    journal.open()
    assert Traffic(path).per_day() == {}  # no table yet: nothing counted
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE traffic (day TEXT PRIMARY KEY, bytes_sent INTEGER NOT NULL, "
               "bytes_received INTEGER NOT NULL)")
    db.execute("INSERT INTO traffic VALUES ('2025-01-01', 10, 20)")
    db.commit()
    db.close()
    traffic = Traffic(path, clock=lambda: DAY)
    traffic.count(sent=1, received=2)
    traffic.flush()
    journal.close()
    journal.open()  # the journal still opens the shared file
    journal.close()
    assert Traffic(path).per_day() == {"1970-01-02": (1, 2), "2025-01-01": (10, 20)}


def test_month_total_and_the_traffic_command_show_the_budget(tmp_path: Path) -> None:
    """month_total sums this UTC month's days only; `gridedge traffic` prints the month's use
    against [uplink] budget_mb_per_month."""
    import calendar
    import subprocess
    import sys
    import time

    now = time.time()
    t = time.gmtime(now)
    month_start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    clock = [month_start - DAY]  # the last day of the previous month
    data = tmp_path / "data"
    traffic = Traffic(data / "journal.db", clock=lambda: clock[0])
    traffic.count(sent=5_000)
    clock[0] = now
    traffic.count(sent=300_000, received=20_000)
    traffic.flush()
    assert traffic.month_total(now) == 320_000
    cfg = tmp_path / "gridedge.toml"
    cfg.write_text(f'data_dir = "{data}"\n[uplink]\nhost = "h"\nport = 1\n'
                   "budget_mb_per_month = 1\n")
    out = subprocess.run([str(Path(sys.executable).parent / "gridedge"), "traffic", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"month {time.strftime('%Y-%m', t)}: 320,000 of 1,000,000 bytes" in out.stdout
