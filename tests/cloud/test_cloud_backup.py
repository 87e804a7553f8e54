"""Backups, retention and restore with the real commands, pg_dump and pg_restore against real
PostgreSQL: three days of readings are backed up, the oldest day is archived and dropped by
retention, and a new database restored from the backup plus the archive holds every reading,
every other row, and takes the same uploads again without doubling them; a later backup into
the same folder skips the closed days it already has."""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from gridcloud import migrations
from gridcloud.api import keys

from support.api_harness import admit, ingest_event, ingest_records, readings
from support.postgres import _with_dbname

METERS = (1, 2, 3)
PER_DAY = 96


def gridcloud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridcloud.cli", *args], capture_output=True,
                          text=True, timeout=120)


def rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def per_day(dsn: str) -> dict[str, int]:
    return {str(d): int(n) for d, n in rows(
        dsn, "SELECT (interval_end AT TIME ZONE 'UTC')::date, count(*) FROM readings "
             "GROUP BY 1 ORDER BY 1")}


@pytest.fixture
def new_database(pg_admin_dsn: str) -> Iterator[str]:
    """A second empty database to restore into."""
    admin = psycopg2.connect(pg_admin_dsn)
    admin.autocommit = True
    name = f"restored_{id(admin)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield _with_dbname(pg_admin_dsn, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_backup_retention_and_restore(pg_dsn: str, new_database: str, tmp_path: Path) -> None:
    """Backup, archive-and-drop the oldest day, restore backup + archive: nothing lost or
    doubled; a restore onto a non-empty database is refused."""
    migrations.migrate(pg_dsn)
    today = datetime.datetime.now(datetime.UTC).date()
    first_day = today - datetime.timedelta(days=3)
    with contextlib.closing(psycopg2.connect(pg_dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT create_readings_partitions(1, 4)")
    admit(pg_dsn, "e1")
    start = int(datetime.datetime.combine(first_day, datetime.time(0, 15),
                                          datetime.UTC).timestamp())
    records = readings(METERS, start, 3 * PER_DAY)
    next_seq = ingest_records(pg_dsn, "e1", 1, records)
    ingest_event(pg_dsn, "e1", next_seq, 1, start, 3, "cover opened")
    keys.create_key(pg_dsn, "ops", ["read"])
    before = per_day(pg_dsn)
    assert sum(before.values()) == 3 * PER_DAY * len(METERS)

    first = tmp_path / "backup-1"
    out = gridcloud("backup", "--dsn", pg_dsn, "--out", str(first))
    assert out.returncode == 0, out.stderr
    assert (first / "main.dump").exists()
    assert (first / "readings" / f"readings_p{first_day:%Y%m%d}.dump").exists()

    # Retention: keep 2 full days; the first day (and the empty one before it) are archived,
    # then detached and dropped.
    archive = tmp_path / "archive"
    out = gridcloud("retention", "--dsn", pg_dsn, "--keep-days", "2", "--archive", str(archive))
    assert out.returncode == 0, out.stderr
    assert f"dropped readings_p{first_day:%Y%m%d}" in out.stdout
    assert (archive / f"readings_p{first_day:%Y%m%d}.dump").exists()
    after = per_day(pg_dsn)
    assert str(first_day) not in after and after == {d: n for d, n in before.items()
                                                      if d != str(first_day)}
    assert not rows(pg_dsn, f"SELECT to_regclass('readings_p{first_day:%Y%m%d}')")[0][0]

    # A backup after retention lacks the day; the archive brings it back.
    second = tmp_path / "backup-2"
    assert gridcloud("backup", "--dsn", pg_dsn, "--out", str(second)).returncode == 0
    out = gridcloud("restore", "--dsn", new_database, str(second), "--archive", str(archive))
    assert out.returncode == 0, out.stderr
    assert per_day(new_database) == before
    for table in ("edges", "events", "api_keys", "schema_migrations", "meters"):
        query = f"SELECT * FROM {table} ORDER BY 1"
        assert rows(new_database, query) == rows(pg_dsn, query), table
    # The restored database is a working gridcloud database: the same uploads again are
    # recognised (high-water mark), a later one is stored once.
    assert not migrations.pending(new_database)
    ingest_records(new_database, "e1", 1, records)
    later = readings(METERS, start + 3 * PER_DAY * 900, 1)
    ingest_records(new_database, "e1", next_seq + 1, later)
    assert sum(per_day(new_database).values()) == (3 * PER_DAY + 1) * len(METERS)

    refused = gridcloud("restore", "--dsn", new_database, str(first))
    assert refused.returncode == 2 and "not empty" in refused.stderr

    # Backing up into the first folder again dumps main.dump and the open days, not a closed
    # day whose file it already holds.
    again = gridcloud("backup", "--dsn", pg_dsn, "--out", str(first), "--refresh-days", "1")
    assert again.returncode == 0, again.stderr
    closed = f"readings_p{today - datetime.timedelta(days=2):%Y%m%d}.dump"
    assert "main.dump" in again.stdout and closed not in again.stdout
    assert f"readings_p{today:%Y%m%d}.dump" in again.stdout
