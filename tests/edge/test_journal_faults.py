"""The journal on a damaged disk, for real: a page of journal.db overwritten on disk, a file
that is not a database.  Storage errors come out as the journal's own errors, an append that
committed never looks failed, and an unreadable journal is moved aside for a fresh one."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gridedge.journal import (
    EVENT_JOURNAL_QUARANTINED,
    Event,
    Journal,
    JournalDiskError,
    JournalError,
)
from gridwire import IntervalRecord
from twisted.internet.task import Clock

from support.journal_helpers import open_journal, rec

PAGE = 4096


def damage_page_holding(db: Path, record: IntervalRecord) -> None:
    """Overwrite, on disk, the header of the B-tree page that stores ``record``.

    The WAL is checkpointed first (by a second connection, as `gridedge traffic` would open
    one), so the record is in the main file and every connection rereads its pages.
    """
    with sqlite3.connect(db) as side:
        side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    side.close()
    data = db.read_bytes()
    offset = data.find(struct.pack("<IIQIHIhH", *record))
    assert offset > 0, "record not found in the file"
    with db.open("r+b") as f:
        f.seek(offset // PAGE * PAGE)
        f.write(b"\xff" * 8)


def damaged_journal(tmp_path: Path) -> Journal:
    """A journal of 2000 readings (seq 1..2000) whose oldest page is damaged on disk."""
    j = open_journal(tmp_path)
    for i in range(20):
        j.append([rec(i, 1000 * i + k) for k in range(100)])
    damage_page_holding(tmp_path / "journal.db", rec(0, 0))
    return j


def test_point4_reading_stored_once_when_a_listener_fails_after_commit(tmp_path: Path) -> None:
    """The uplink, told of an append, resends from the oldest pending entry, which sits on a
    damaged page: its read fails.  The append had committed, so it must not raise (the radio
    link would offer the same reading again and it would be stored twice)."""
    j = damaged_journal(tmp_path)
    j.on_append(lambda: j.read(j.first_pending_seq or 1, 100))
    reading = rec(7777, 42)
    for _attempt in range(3):  # as the radio link does: a failed append is offered again
        try:
            j.append([reading])
            break
        except Exception:  # any failure makes the caller retry
            continue
    stored = [s for s, entry in j.read(2001, 10) if entry == reading]
    assert stored == [2001]


def test_point4_storage_errors_are_journal_errors(tmp_path: Path) -> None:
    """A damaged page gives JournalError from read, not sqlite3's own error, so the uplink's
    pump, which handles JournalError, survives it."""
    from edge.test_uplink_link import Cloud, connect

    j = damaged_journal(tmp_path)
    with pytest.raises(JournalError, match="malformed"):
        j.read(1, 10)
    cloud = Cloud()
    connect(j, cloud, Clock())  # the pump reads from seq 1 at Welcome
    assert cloud.uploads() == [] and cloud.closed == 0
    j.append([rec(1)])  # and again when told of an append


def not_a_database(db: Path) -> None:
    """Overwrite the file's header, as a torn write or a bad block would."""
    with db.open("r+b") as f:
        f.write(b"\x00garbage" * 12)


def damaged_page(db: Path) -> None:
    damage_page_holding(db, rec(0, 0))


@pytest.mark.parametrize("damage", [not_a_database, damaged_page])
def test_point8_unreadable_journal_is_quarantined_and_a_new_one_started(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """A journal that cannot be read is moved aside under a timestamped name, kept byte for
    byte, and a new journal opens at once with an event that names what was kept."""
    j = damaged_journal(tmp_path) if damage is damaged_page else open_journal(tmp_path)
    j.append([rec(1)] * 10)
    j.close()
    db = tmp_path / "journal.db"
    damage(db)
    before = db.read_bytes()
    j = Journal(db, max_bytes=10_000_000, clock=lambda: 1_767_225_600.0)
    j.open()
    kept = tmp_path / "journal.db.unreadable-20260101T000000Z"
    assert kept.read_bytes() == before
    assert j.disk_fault is None
    (seq, event), = j.read(0, 10)
    assert isinstance(event, Event) and event.kind == EVENT_JOURNAL_QUARANTINED
    assert kept.name in event.detail and f"{len(before)} bytes" in event.detail
    j.append([rec(2)])
    assert j.read(seq + 1, 5) == [(seq + 1, rec(2))]


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_point8_a_journal_that_cannot_be_moved_aside_is_a_disk_fault(tmp_path: Path) -> None:
    """On a data partition remounted read-only (ext4's errors=remount-ro) the unreadable file
    cannot be moved aside: opening raises JournalDiskError and the journal says why (for
    health), leaving the file where it is."""
    data = tmp_path / "data"
    data.mkdir()
    open_journal(data).close()
    not_a_database(data / "journal.db")
    j = Journal(data / "journal.db", max_bytes=10_000_000)
    with read_only(data), pytest.raises(JournalDiskError, match="cannot be moved aside"):
        j.open()
    assert j.disk_fault is not None and "unreadable" in j.disk_fault
    assert sorted(p.name for p in data.iterdir()) == ["journal.db"]


@contextlib.contextmanager
def read_only(where: Path) -> Iterator[None]:
    """Make ``where`` a read-only bind mount of itself for the block."""
    subprocess.run(["mount", "--bind", str(where), str(where)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(where)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(where)], check=True)
