"""The full-disk path for real: a tiny tmpfs (as root) and a file-size rlimit, no mocks.

A full disk must give JournalFullError with a clear message, keep what was stored,
record a journal-disk-full event once space is back, and let appends resume.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gridedge.journal import EVENT_JOURNAL_DISK_FULL, Event, Journal, JournalFullError

from support.journal_helpers import rec, tiny_tmpfs
from support.processes import python_env


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="mounting a tmpfs needs root; the rlimit test covers this")
def test_full_tmpfs_gives_clear_error_then_recovers(tmp_path: Path) -> None:
    """On a full filesystem append raises JournalFullError, old records survive, writes resume."""
    with tiny_tmpfs(tmp_path / "data", "2m") as data:
        j = Journal(data / "journal.db", max_bytes=100 << 20)
        j.open()
        j.append([rec(1)] * 100)
        filler = data / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        stored = 100
        with pytest.raises(JournalFullError, match="disk full") as info:
            for i in range(10_000):
                j.append([rec(i, k) for k in range(20)])
                stored += 20
        assert "records not stored" in str(info.value)
        assert j.stats().disk_full
        assert [s for s, _ in j.read(0, 100_000)] == list(range(1, stored + 1))
        # Still full: a second failure is the same clear error, not a crash.
        with pytest.raises(JournalFullError):
            j.append([rec(2)])
        filler.unlink()
        j.append([rec(3)])
        assert not j.stats().disk_full
        rows = j.read(stored + 1, 5)
        assert rows[0] == (stored + 1, rec(3))
        assert len(rows) == 2 and isinstance(rows[1][1], Event)
        assert rows[1][1].kind == EVENT_JOURNAL_DISK_FULL and "full" in rows[1][1].detail
        j.close()


def test_file_size_limit_gives_clear_error_then_recovers(tmp_path: Path) -> None:
    """Under RLIMIT_FSIZE (EFBIG, in a child process) the same contract holds."""
    code = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from gridedge.journal import Journal, JournalFullError
        from support.journal_helpers import rec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        j = Journal(Path({str(tmp_path)!r}) / "journal.db", max_bytes=100 << 20)
        j.open()
        j.append([rec(1)] * 10)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        stored = 10
        try:
            for i in range(100_000):
                j.append([rec(i, k) for k in range(20)])
                stored += 20
        except JournalFullError as exc:
            print("FULL", exc)
        seqs = [s for s, _ in j.read(0, 100_000)]
        assert seqs == list(range(1, stored + 1)), (len(seqs), stored)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        j.append([rec(3)])
        rows = j.read(stored + 1, 5)
        print("RESUMED", rows[0] == (stored + 1, rec(3)), [type(e).__name__ for _, e in rows[1:]])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=python_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("FULL ") and "disk full" in lines[0]
    assert lines[1] == "RESUMED True ['Event']"
