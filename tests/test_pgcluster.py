"""Tests of tools/pgcluster.py: the throwaway PostgreSQL used by tests and the demo."""

from __future__ import annotations

import psycopg2


def test_fresh_database_is_empty_and_writable(pg_dsn: str) -> None:
    """Each test gets an empty database it can create tables in."""
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone() == (0,)
        cur.execute("CREATE TABLE t (x int)")
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("SELECT x FROM t")
        assert cur.fetchall() == [(1,)]


def test_server_listens_on_loopback_only(pg_dsn: str) -> None:
    """The test cluster never listens beyond 127.0.0.1."""
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)
        cur.execute("SHOW server_version_num")
        assert int(cur.fetchone()[0]) // 10000 == 15
