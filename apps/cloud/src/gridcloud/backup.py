"""Backups, restore and readings retention: ``gridcloud backup``, ``restore``, ``retention``.

Why the readings are dumped apart from the rest: they are nearly all of the
data and, once a UTC day is over, a day's partition never changes again (late
readings of that day are rare and land in it, see below).  So a backup is

- ``main.dump``: ``pg_dump -Fc`` of the whole database *without* the readings'
  rows (every table's definition, partitions included, and all other data:
  edges, meters, events, keys, dead letters, migrations), small, taken every
  time;
- ``readings/<partition>.dump``: one ``pg_dump -Fc`` per readings partition.
  A closed day (older than ``--refresh-days``, default 2) whose file exists is
  not dumped again, so a nightly backup costs the last days plus the small
  main dump, and the folder grows by one file a day.  The default partition
  (readings outside the prepared days) is dumped every time.

Restore (:func:`restore`) loads ``main.dump`` into an empty database, then each
partition file: the rows only when the partition exists (it came with
main.dump), the table, its ATTACH and the rows when it does not (a day that
retention dropped, restored from its archive).

Retention (:func:`apply_retention`): daily partitions whose whole day is older
than ``keep_days`` are written to the archive folder first (the same one-file
format; an existing file is kept), then detached and dropped, one transaction
each.  ``create_readings_partitions`` keeps making days ahead (the serve nodes'
PartitionMaintenance does it too).  Run it on one machine, from a timer
(deploy/systemd/gridcloud-retention.timer): dropping is not something every
node should race to do.

Every file is written to ``NAME.tmp`` and renamed when pg_dump succeeded, so a
cut backup never leaves a file that looks complete.

Reference: docs/operations.md ("Backups and restore", "Retention").

Tests: tests/cloud/test_cloud_backup.py.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

PARTITION = re.compile(r"^readings_p(\d{8})$")
MAIN = "main.dump"
READINGS = "readings"


class BackupError(Exception):
    """A dump, a restore or a retention step failed; the message says which and why."""


@dataclass(frozen=True)
class Partition:
    name: str
    #: the UTC day it holds, None for the default partition
    day: datetime.date | None


def _tool(name: str) -> str:
    """pg_dump / pg_restore: from PATH (Debian's wrappers pick the cluster's version), else
    PostgreSQL 15's own folder."""
    found = shutil.which(name) or (f"/usr/lib/postgresql/15/bin/{name}"
                                   if Path(f"/usr/lib/postgresql/15/bin/{name}").exists()
                                   else None)
    if found is None:
        raise BackupError(f"{name} not found (Debian: apt-get install postgresql-client-15)")
    return found


@contextlib.contextmanager
def _connect(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(dsn)
    try:
        yield conn
    finally:
        conn.close()


def partitions(dsn: str) -> list[Partition]:
    """The readings partitions, oldest day first, the default partition last."""
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'readings'::regclass")
        names = [r[0] for r in cur.fetchall()]
    out = []
    for name in names:
        m = PARTITION.match(name)
        out.append(Partition(name, datetime.datetime.strptime(m.group(1), "%Y%m%d").date()
                             if m else None))
    return sorted(out, key=lambda p: (p.day is None, p.day or datetime.date.min))


def _dump(dsn: str, target: Path, *args: str) -> None:
    tmp = target.with_name(target.name + ".tmp")
    out = subprocess.run([_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(tmp),
                          *args, "--dbname", dsn], capture_output=True, text=True)
    if out.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"pg_dump for {target.name} failed: {out.stderr.strip()}")
    os.replace(tmp, target)


def backup(dsn: str, folder: Path, *, refresh_days: int = 2,
           today: datetime.date | None = None) -> list[str]:
    """Write main.dump and the partitions' files under ``folder``; the names written."""
    today = today or datetime.datetime.now(datetime.UTC).date()
    (folder / READINGS).mkdir(parents=True, exist_ok=True)
    written = []
    # Partition names are listed first: a partition created meanwhile is in the next backup.
    parts = partitions(dsn)
    _dump(dsn, folder / MAIN, "--exclude-table-data=readings*")
    written.append(MAIN)
    for part in parts:
        target = folder / READINGS / f"{part.name}.dump"
        closed = part.day is not None and part.day < today - datetime.timedelta(days=refresh_days)
        if closed and target.exists():
            continue
        _dump(dsn, target, f"--table=public.{part.name}")
        written.append(f"{READINGS}/{target.name}")
    return written


def _restore(dsn: str, file: Path, *args: str) -> None:
    out = subprocess.run([_tool("pg_restore"), "--no-owner", "--exit-on-error", *args,
                          "--dbname", dsn, str(file)], capture_output=True, text=True)
    if out.returncode != 0:
        raise BackupError(f"pg_restore of {file.name} failed: {out.stderr.strip()}")


def restore(dsn: str, folder: Path, archives: list[Path] | None = None) -> int:
    """Load a backup (and archived partitions) into the empty database ``dsn``; returns the
    number of partition files loaded.  Refuses a database that already has a schema."""
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.readings') IS NOT NULL")
        if cur.fetchone()[0]:
            raise BackupError("the target database is not empty (it has a readings table): "
                              "restore into a new database")
    if not (folder / MAIN).exists():
        raise BackupError(f"{folder / MAIN}: no such file (is {folder} a gridcloud backup?)")
    _restore(dsn, folder / MAIN)
    files: dict[str, Path] = {}
    for source in [*(archives or []), folder / READINGS]:  # the backup wins over an archive
        for file in sorted(source.glob("readings_*.dump")):
            files[file.name] = file
    with _connect(dsn) as conn:
        conn.autocommit = True
        for name, file in sorted(files.items()):
            table = name.removesuffix(".dump")
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
                exists = cur.fetchone()[0]
            if not exists:
                # The table and its ATTACH (pre-data): attaching makes the parent's indexes on
                # it, so the file's own index statements (post-data) are not run.
                _restore(dsn, file, "--section=pre-data")
            _restore(dsn, file, "--data-only")
    return len(files)


def apply_retention(dsn: str, keep_days: int, archive: Path | None, *,
                    today: datetime.date | None = None) -> list[str]:
    """Archive (if ``archive``), detach and drop the daily partitions older than ``keep_days``
    full days; the names dropped."""
    if keep_days < 1:
        raise BackupError("keep_days must be at least 1")
    today = today or datetime.datetime.now(datetime.UTC).date()
    cutoff = today - datetime.timedelta(days=keep_days)
    dropped = []
    for part in partitions(dsn):
        if part.day is None or part.day >= cutoff:
            continue
        if archive is not None:
            archive.mkdir(parents=True, exist_ok=True)
            target = archive / f"{part.name}.dump"
            if not target.exists():
                _dump(dsn, target, f"--table=public.{part.name}")
        with _connect(dsn) as conn, conn, conn.cursor() as cur:
            cur.execute(f'ALTER TABLE readings DETACH PARTITION "{part.name}"')
            cur.execute(f'DROP TABLE "{part.name}"')
        dropped.append(part.name)
    return dropped


def create_ahead(dsn: str, days_ahead: int) -> int:
    """Make sure the next ``days_ahead`` days have their partitions; how many were made."""
    with _connect(dsn) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT create_readings_partitions(%s)", (days_ahead,))
        return int(cur.fetchone()[0])
