"""The small SQLite files of the unit's own state on /data (commands, prepaid credit).

Why one opener: each of them must survive a power cut at any instant with every
committed row in it, and they must not differ in how.  WAL with ``synchronous=FULL``
makes a COMMIT durable when it returns (the WAL is fsynced at each commit), and
``isolation_level=None`` leaves transactions to the caller's explicit ``BEGIN``, so a
row is never committed by the driver behind the caller's back.  The journal has its
own opener (gridedge.journal): it caps its size and tunes its sync level.

Tests: tests/edge/test_edge_commands.py, tests/edge/test_edge_credit.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["open_durable"]


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating it and its folder) the file at ``path`` and apply ``schema``
    (idempotent DDL); raises OSError or sqlite3.Error for the caller to word."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchone()
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.Error:
        db.close()
        raise
    return db
