"""Fixtures of the HTTP API tests (a pytest plugin): one seeded database and one running
``gridcloud api`` per test module, since the read-only tests do not change what they read.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_auth.py,
tests/cloud/test_api_bad_input.py, tests/cloud/test_api_schema.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import psycopg2
import pytest

from support import release_bundles
from support.api_harness import ApiProcess, World, running_api, seed_world
from support.release_bundles import releases_section

_counter = itertools.count()


@pytest.fixture(scope="module")
def module_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a brand-new database shared by one test module, dropped after it."""
    name = f"m{os.getpid()}_{next(_counter)}"
    admin = psycopg2.connect(pg_admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        parts = [p for p in pg_admin_dsn.split() if not p.startswith("dbname=")]
        yield " ".join([*parts, f"dbname={name}"])
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture(scope="module")
def world(module_dsn: str) -> World:
    """The module's database, migrated and seeded (support.api_harness.seed_world)."""
    return seed_world(module_dsn)


@pytest.fixture(scope="module")
def api(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """A ``gridcloud api`` process over the module's world (releases on, with a keyring of
    its own, so that every operation of the document can be called)."""
    folder = tmp_path_factory.mktemp("api")
    releases = releases_section(folder / "releases", release_bundles.keys(folder / "keys"))
    yield from running_api(world.dsn, folder / "api.log", releases=releases)
