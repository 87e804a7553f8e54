"""The journal: durable appends, consecutive never-reused sequence numbers, cumulative acks,
the size bound with eviction events, and survival across reopen/kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gridedge.journal import (
    EVENT_JOURNAL_EVICTED,
    Event,
    Journal,
    JournalClosedError,
)
from gridwire import IntervalRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from support.journal_helpers import open_journal, rec
from support.processes import python_env


def test_append_assigns_consecutive_sequence_numbers(tmp_path: Path) -> None:
    """Records get 1, 2, 3, ... in order and read back unchanged (the largest energy too)."""
    j = open_journal(tmp_path)
    j.append([rec(1), rec(2, 2**63 - 1)])
    j.append([rec(3)])
    assert j.read(1, 10) == [(1, rec(1)), (2, rec(2, 2**63 - 1)), (3, rec(3))]
    assert j.next_seq == 4 and j.pending == 3 and j.first_pending_seq == 1


def test_ack_is_cumulative_and_numbers_are_never_reused(tmp_path: Path) -> None:
    """An Ack deletes everything up to it; after deleting all and reopening, numbering continues."""
    j = open_journal(tmp_path)
    j.append([rec(1)] * 5)
    assert j.ack(3) == 3
    assert [s for s, _ in j.read(0, 10)] == [4, 5]
    assert j.ack(2) == 0  # an old ack is harmless
    assert j.ack(5) == 2
    assert j.pending == 0 and j.first_pending_seq is None
    j.close()
    j = open_journal(tmp_path)
    j.append([rec(9)])
    assert j.read(0, 10) == [(6, rec(9))]


def test_records_survive_kill_9_right_after_append(tmp_path: Path) -> None:
    """A child process appends, prints 'done', and is killed -9: every record is there after."""
    code = textwrap.dedent(f"""
        import signal
        from pathlib import Path
        from support.journal_helpers import open_journal, rec
        j = open_journal(Path({str(tmp_path)!r}))
        for i in range(50):
            j.append([rec(i)] * 10)
        print("done", flush=True)
        signal.pause()  # until the SIGKILL
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=python_env())
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "done"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    j = open_journal(tmp_path)
    rows = j.read(0, 10_000)
    assert [s for s, _ in rows] == list(range(1, 501))
    assert rows[-1][1] == rec(49)


def test_size_bound_evicts_oldest_counts_and_reports(tmp_path: Path) -> None:
    """A capped journal keeps accepting: oldest entries go, counted, reported as an event."""
    j = open_journal(tmp_path, max_bytes=256 * 1024)
    appended = []
    for i in range(1500):
        batch = [rec(i, i * 10 + k) for k in range(10)]
        appended.extend(batch)
        j.append(batch)
    stats = j.stats()
    assert stats.size_bytes <= 256 * 1024
    assert stats.evicted_total > 0
    assert stats.pending + stats.evicted_total == stats.next_seq - 1
    rows = j.read(0, 100_000)
    assert [s for s, _ in rows] == list(range(rows[0][0], stats.next_seq)), "one run, no gaps"
    readings = [r for _, r in rows if isinstance(r, IntervalRecord)]
    assert readings == appended[-len(readings):], "the newest readings are the ones kept"
    events = [e for _, e in rows if isinstance(e, Event)]
    assert events and all(e.kind == EVENT_JOURNAL_EVICTED and e.meter_id == 0 for e in events)
    assert "dropped" in events[-1].detail and str(stats.evicted_total) in events[-1].detail
    j.close()
    j = open_journal(tmp_path, max_bytes=256 * 1024)
    assert j.stats().evicted_total == stats.evicted_total


def test_events_share_the_sequence_space(tmp_path: Path) -> None:
    """Events get the next journal sequence number and go away with the same cumulative ack."""
    j = open_journal(tmp_path)
    j.append([rec(1)])
    j.append_event(Event(7, 1_700_000_000, 1, "tamper ☇"))
    j.append([rec(2)])
    assert j.read(0, 10) == [(1, rec(1)), (2, Event(7, 1_700_000_000, 1, "tamper ☇")), (3, rec(2))]
    j.ack(2)
    assert j.read(0, 10) == [(3, rec(2))]


def test_skip_to_moves_numbering_forward_only(tmp_path: Path) -> None:
    """skip_to never moves numbering backwards, and the jump is persisted."""
    j = open_journal(tmp_path)
    j.skip_to(100)
    j.skip_to(50)
    j.append([rec(1)])
    j.close()
    j = open_journal(tmp_path)
    assert j.read(0, 5) == [(100, rec(1))]
    assert j.next_seq == 101


def test_closed_journal_refuses_appends(tmp_path: Path) -> None:
    """Appending to a closed journal is a clear error, not a silent loss."""
    j = open_journal(tmp_path)
    j.close()
    with pytest.raises(JournalClosedError):
        j.append([rec(1)])


def test_append_errors_are_sink_errors_for_the_radio_link(tmp_path: Path) -> None:
    """Journal errors are SinkErrors: the radio link logs them once per outage, no traceback."""
    from gridedge.journal import JournalFullError
    from gridedge.radio import SinkError

    assert issubclass(JournalFullError, SinkError)
    j = open_journal(tmp_path)
    j.close()
    with pytest.raises(SinkError):
        j.append([rec(1)])


def test_listeners_hear_appends(tmp_path: Path) -> None:
    """The uplink learns of new records through on_append; removal works."""
    j = open_journal(tmp_path)
    calls: list[int] = []
    remove = j.on_append(lambda: calls.append(j.next_seq))
    j.append([rec(1)])
    remove()
    j.append([rec(2)])
    assert calls == [2]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 20), st.integers(-5, -1)), max_size=30))
def test_pending_is_always_one_consecutive_run(
    tmp_path_factory: pytest.TempPathFactory, ops: list[int]
) -> None:
    """Any mix of appends (positive) and acks (negative: ack back from the end) keeps one run."""
    j = open_journal(tmp_path_factory.mktemp("j"))
    model: list[int] = []
    for op in ops:
        if op > 0:
            start = j.next_seq
            j.append([rec(op)] * op)
            model.extend(range(start, start + op))
        elif model:
            upto = model[max(0, len(model) + op - 1)]
            j.ack(upto)
            model = [s for s in model if s > upto]
        assert [s for s, _ in j.read(0, 10_000)] == model
        assert j.pending == len(model)
        assert j.first_pending_seq == (model[0] if model else None)
    j.close()


def test_watermarks_survive_ack_eviction_and_reopen(tmp_path: Path) -> None:
    """The RecordSink watermark per meter is the newest interval_end ever appended, forever."""
    from gridedge.radio import RecordSink

    j = open_journal(tmp_path, max_bytes=256 * 1024)
    assert isinstance(j, RecordSink)
    j.append([IntervalRecord(1, 900, 0, 0, 0, 0, 0), IntervalRecord(2, 1800, 0, 0, 0, 0, 0)])
    j.append([IntervalRecord(1, 2700, 0, 0, 0, 0, 0)])
    j.ack(j.next_seq - 1)
    assert j.pending == 0
    j.close()
    j = open_journal(tmp_path, max_bytes=256 * 1024)
    assert j.watermarks() == {1: 2700, 2: 1800}


def test_event_detail_cut_to_wire_limit_and_bad_fields_refused(tmp_path: Path) -> None:
    """A long detail is cut to 255 UTF-8 bytes (never mid-character); a kind beyond u16 is
    refused at append, so it can never block the uplink later."""
    j = open_journal(tmp_path)
    j.append_event(Event(1, 1_700_000_000, 1, "é" * 200))
    (_, ev), = j.read(0, 5)
    assert isinstance(ev, Event) and ev.detail == "é" * 127
    with pytest.raises(ValueError, match="invalid event"):
        j.append_event(Event(1, 1_700_000_000, 70_000, ""))
    assert j.pending == 1


def fill_to_pages(j: Journal, pages: int) -> list[IntervalRecord]:
    """Append small batches until the database file spans ``pages`` pages; returns them."""
    appended: list[IntervalRecord] = []
    page_size = 4096
    while j.stats().size_bytes < pages * page_size:
        batch = [rec(len(appended) + k, k) for k in range(10)]
        j.append(batch)
        appended.extend(batch)
    assert j.stats().evicted_total == 0
    return appended


@pytest.mark.parametrize("burst", [600, 1200])
def test_point3_burst_crossing_the_cap_evicts(tmp_path: Path, burst: int) -> None:
    """128 KiB cap, 26 of its 32 pages used, then one burst that does not fit under the cap:
    the cap (not the disk) is reached, so the oldest entries are evicted and the burst is
    stored whole, in one append; the disk is not reported full."""
    j = open_journal(tmp_path, max_bytes=128 * 1024)
    old = fill_to_pages(j, 26)
    records = [rec(10_000 + k, k) for k in range(burst)]
    j.append(records)
    stats = j.stats()
    assert not stats.disk_full
    assert stats.size_bytes <= 128 * 1024
    assert 0 < stats.evicted_total <= len(old)
    rows = j.read(0, 100_000)
    assert [s for s, _ in rows] == list(range(rows[0][0], stats.next_seq)), "one run, no gaps"
    readings = [r for _, r in rows if isinstance(r, IntervalRecord)]
    assert readings[-burst:] == records, "the whole burst is kept"
    events = [e for _, e in rows if isinstance(e, Event)]
    assert [e.kind for e in events] == [EVENT_JOURNAL_EVICTED]
    assert stats.pending + stats.evicted_total == stats.next_seq - 1


def test_point3_burst_larger_than_the_cap_keeps_its_newest(tmp_path: Path) -> None:
    """A burst that alone exceeds the cap cannot be stored whole: rather than refusing it for
    ever (the radio link would offer it again and again), the journal keeps what fits, the
    newest, and counts the rest as evicted; every sequence number is still accounted for and
    the watermarks cover the whole burst, so the radio link does not fetch it again."""
    j = open_journal(tmp_path, max_bytes=128 * 1024)
    fill_to_pages(j, 10)
    records = [IntervalRecord(5000 + k % 50, 900 * (1 + k // 50), k, 0, 0, 0, 0, 0)
               for k in range(10_000)]
    j.append(records)
    stats = j.stats()
    assert not stats.disk_full and stats.size_bytes <= 128 * 1024
    rows = j.read(0, 100_000)
    readings = [r for _, r in rows if isinstance(r, IntervalRecord)]
    assert 0 < len(readings) < len(records) and readings == records[-len(readings):]
    assert stats.pending + stats.evicted_total == stats.next_seq - 1
    marks = j.watermarks()
    assert {m: marks[m] for m in range(5000, 5050)} == {m: 900 * 200 for m in range(5000, 5050)}
