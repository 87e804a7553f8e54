"""The suite's PostgreSQL (a pytest plugin): a real cluster and a fresh database per test.

Under ``make test`` the cluster is started by ``tools/pgcluster.py run``, which
exports GRIDEDGE_PG_DSN; run bare (``pytest tests/...``) the session starts a
temporary cluster of its own, so a single test file can be run directly.

Tests: tests/test_pgcluster.py, and every test that takes ``pg_dsn``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

import pgcluster

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgcluster.Cluster | None]:
    """The session's cluster, or None when an outer one was handed to us by DSN."""
    if os.environ.get(pgcluster.DSN_ENV):
        yield None
        return
    with pgcluster.temporary_cluster() as cluster:
        os.environ[pgcluster.DSN_ENV] = cluster.dsn()
        try:
            yield cluster
        finally:
            del os.environ[pgcluster.DSN_ENV]


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_cluster: pgcluster.Cluster | None) -> str:
    """DSN of the maintenance database of the test cluster."""
    return os.environ[pgcluster.DSN_ENV]


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a brand-new empty database, dropped after the test."""
    import psycopg2

    name = f"t{os.getpid()}_{next(_counter)}"
    admin = psycopg2.connect(pg_admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield _with_dbname(pg_admin_dsn, name)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def _with_dbname(dsn: str, dbname: str) -> str:
    parts = [p for p in dsn.split() if not p.startswith("dbname=")]
    return " ".join([*parts, f"dbname={dbname}"])
