"""Helpers shared by the tests that fill a journal (imported, not collected): tests/edge and
tests/system/test_journal_limits.py."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from gridedge.journal import Journal
from gridwire import IntervalRecord


def rec(meter: int, energy: int = 0) -> IntervalRecord:
    """A valid interval record for meter ``meter``."""
    return IntervalRecord(meter, 1_700_000_100, energy, 1500, 2301, 6500, 950, 0)


def open_journal(path: Path, max_bytes: int = 10_000_000, **kw: object) -> Journal:
    """An opened journal in ``path``/journal.db (``kw``: other Journal arguments)."""
    j = Journal(path / "journal.db", max_bytes=max_bytes, **kw)  # type: ignore[arg-type]
    j.open()
    return j


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a real tmpfs of ``size`` at ``where`` (needs root): a data partition to fill."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
