"""Versioned schema migrations: ``NNNN_name.sql`` files applied in order, once.

Why a runner of our own: the schema is small and plain SQL is what an
operator reviews; all that is needed is "apply what is missing, in order,
atomically, and remember it".  So:

- Each file runs in its own transaction together with the row recording it in
  ``schema_migrations``; a failing migration leaves no trace and the next run
  retries it.
- ``pg_advisory_xact_lock`` serialises concurrent runners (two cloud nodes
  started with ``--migrate`` at once): the second waits, then finds nothing to do.
- The SHA-256 of each applied file is recorded; if an applied file was edited
  afterwards the runner refuses to go on, because the database no longer
  matches the code's idea of the schema.  Change the schema with a new file.

Blocking psycopg2 on purpose: migrations run from the command line or before
the reactor starts, never inside the event loop.
Tests: tests/cloud/test_cloud_migrations.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x67726964  # "grid": advisory lock id shared by every runner

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The database and the migration files disagree; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped with this package, in version order."""
    found = []
    for entry in resources.files(__name__).iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


def _applied(cur: psycopg2.extensions.cursor) -> dict[int, str]:
    cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return {}
    cur.execute("SELECT version, sha256 FROM schema_migrations")
    return dict(cur.fetchall())


def _check(applied: dict[int, str], migrations: list[Migration]) -> list[Migration]:
    known = {m.version: m for m in migrations}
    for version, digest in applied.items():
        mig = known.get(version)
        if mig is None:
            raise MigrationError(
                f"database has migration {version:04d}, which this gridcloud does not know:"
                " it is older than the schema"
            )
        if mig.sha256 != digest:
            raise MigrationError(
                f"migration {version:04d}_{mig.name}.sql was changed after it was applied;"
                " add a new migration instead"
            )
    return [m for m in migrations if m.version not in applied]


def pending(dsn: str) -> list[Migration]:
    """Migrations not yet applied to the database at ``dsn`` (checks applied ones too)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            return _check(_applied(cur), available())
    finally:
        conn.close()


def migrate(dsn: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; return those applied."""
    migrations = available() if migrations is None else migrations
    done: list[Migration] = []
    conn = psycopg2.connect(dsn)
    try:
        while True:
            with conn, conn.cursor() as cur:  # one transaction per migration
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                cur.execute(_CREATE_TABLE)
                todo = _check(_applied(cur), migrations)
                if not todo:
                    return done
                mig = todo[0]
                cur.execute(mig.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.sha256),
                )
            done.append(mig)
    finally:
        conn.close()
