"""Schema migrations and the partitioned readings table, against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime

import psycopg2
import pytest
from gridcloud import migrations
from gridcloud.cli import main
from gridcloud.server import check_schema

from support.cloud_harness import query


def test_migrate_twice_is_a_no_op_and_records_versions(pg_dsn: str) -> None:
    """The first run applies every file and records version and hash; the second does nothing."""
    applied = migrations.migrate(pg_dsn)
    assert [m.version for m in applied] == [m.version for m in migrations.available()]
    assert migrations.migrate(pg_dsn) == []
    rows = query(pg_dsn, "SELECT version, name, sha256 FROM schema_migrations ORDER BY version")
    assert rows == [(m.version, m.name, m.sha256) for m in migrations.available()]
    assert migrations.pending(pg_dsn) == []


def test_cli_migrate_and_status(pg_dsn: str, capsys) -> None:
    """`gridcloud migrate --status` exits 1 while migrations are pending, 0 after `migrate`."""
    assert main(["migrate", "--dsn", pg_dsn, "--status"]) == 1
    assert "0001_initial: pending" in capsys.readouterr().out
    assert main(["migrate", "--dsn", pg_dsn]) == 0
    assert "applied 0001_initial" in capsys.readouterr().out
    assert main(["migrate", "--dsn", pg_dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["migrate", "--dsn", pg_dsn, "--status"]) == 0


def test_failed_migration_leaves_nothing_behind(pg_dsn: str) -> None:
    """A migration failing half-way is rolled back whole, not recorded; a later run retries it."""
    good = migrations.available()
    broken = migrations.Migration(99, "broken", "CREATE TABLE half (x int); SELECT 1/0;")
    with pytest.raises(psycopg2.Error):
        migrations.migrate(pg_dsn, [*good, broken])
    assert query(pg_dsn, "SELECT to_regclass('half')") == [(None,)]
    assert query(pg_dsn, "SELECT max(version) FROM schema_migrations") == [(good[-1].version,)]
    fixed = migrations.Migration(99, "broken", "CREATE TABLE half (x int);")
    assert migrations.migrate(pg_dsn, [*good, fixed]) == [fixed]


def test_an_edited_applied_migration_is_refused(pg_dsn: str) -> None:
    """If an applied file's text changed, the runner refuses instead of guessing."""
    migrations.migrate(pg_dsn)
    first = migrations.available()[0]
    edited = dataclasses.replace(first, sql=first.sql + "\n-- edited\n")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.migrate(pg_dsn, [edited])


def test_server_refuses_a_stale_schema_unless_asked_to_migrate(pg_dsn: str) -> None:
    """`serve` without --migrate refuses a database with pending migrations; with it, migrates."""
    with pytest.raises(migrations.MigrationError, match="gridcloud migrate"):
        check_schema(pg_dsn, apply=False)
    assert check_schema(pg_dsn, apply=True)
    assert check_schema(pg_dsn, apply=False) == []


def test_readings_are_partitioned_by_day_with_a_default(pg_dsn: str) -> None:
    """Daily partitions exist around today; readings outside them land in the default partition."""
    migrations.migrate(pg_dsn)
    today = datetime.datetime.now(datetime.UTC).date()
    parts = {
        r[0]
        for r in query(
            pg_dsn,
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'readings'::regclass",
        )
    }
    for offset in range(-1, 8):
        assert f"readings_p{today + datetime.timedelta(days=offset):%Y%m%d}" in parts
    assert "readings_default" in parts
    assert query(pg_dsn, "SELECT create_readings_partitions(7)") == [(0,)]  # idempotent


def test_new_partition_takes_over_rows_waiting_in_the_default(pg_dsn: str) -> None:
    """Creating a day's partition later moves that day's rows out of the default partition."""
    migrations.migrate(pg_dsn)
    query(pg_dsn, "INSERT INTO edges (edge_id) VALUES ('e1')")
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20)
    query(
        pg_dsn,
        "SELECT ingest_batch('e1', 1, '{5}', %s, '{1}', '{1}', '{2300}', '{1}', '{1000}', '{0}')",
        (f"{{{int(when.timestamp())}}}",),
    )
    assert query(pg_dsn, "SELECT tableoid::regclass::text FROM readings") == [("readings_default",)]
    assert query(pg_dsn, "SELECT create_readings_partitions(21)")[0][0] >= 1
    assert query(pg_dsn, "SELECT tableoid::regclass::text, seq FROM readings") == [
        (f"readings_p{when:%Y%m%d}", 1)
    ]
