"""Revoking edges and certificates: rows in PostgreSQL that every cloud node checks.

Why in the database and not (only) a CRL file: PostgreSQL is the one state all
cloud nodes share, so a revocation takes effect on every node at the next
connection, with no file to distribute and reload.  The server checks both
tables when an edge says Hello (``IngestStore.admit``).  To end a session that
is already open, each revocation also sends ``NOTIFY gridcloud_revoked`` (on
commit) with "<edge id>" or "<edge id> <serial>"; every node LISTENs and closes
the matching live session (see ``gridcloud.server.RevocationListener``).

- ``revoke_edge``: the edge itself is banned, whatever certificate it shows.
- ``revoke_certificate``: one certificate (by serial) is banned, e.g. the key of
  an edge that was re-keyed leaked; the edge's new certificate still works.

Blocking psycopg2: these are operator commands, not server code.
Tests: tests/cloud/test_cloud_ingest.py, tests/cloud/test_cloud_server.py,
tests/system/test_certificates.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions

from .pki import PKIError, check_edge_id

#: The NOTIFY channel that tells every cloud node to drop a revoked edge's session.
CHANNEL = "gridcloud_revoked"
#: Stands for "any edge" in a certificate notice that names no edge.
ANY_EDGE = "*"


def notice(edge_id: str | None, serial: int | None = None) -> str:
    """The NOTIFY payload for revoking ``edge_id`` (no serial) or certificate ``serial``."""
    if serial is None:
        if edge_id is None:
            raise ValueError("a revocation names an edge, a certificate serial, or both")
        return edge_id
    return f"{edge_id or ANY_EDGE} {serial}"


def parse_notice(payload: str) -> tuple[str | None, int | None]:
    """``(edge_id, None)`` for a revoked edge, ``(None, serial)`` for a revoked certificate.

    The edge id in a certificate notice is only for people reading it: the
    certificate is found by its serial, whoever it belongs to.  Raises
    ValueError for a payload that is neither.
    """
    edge_id, _, serial = payload.partition(" ")
    if serial:
        return None, int(serial)
    try:
        return check_edge_id(edge_id), None
    except PKIError as exc:
        raise ValueError(f"revocation notice {payload!r}: {exc}") from None


@contextlib.contextmanager
def _transaction(dsn: str) -> Iterator[psycopg2.extensions.cursor]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:  # commits, or rolls back on error
            yield cur
    finally:
        conn.close()


def revoke_edge(dsn: str, edge_id: str, reason: str = "") -> None:
    """Ban ``edge_id`` (creating its row if it never connected)."""
    check_edge_id(edge_id)
    with _transaction(dsn) as cur:
        cur.execute(
            """INSERT INTO edges (edge_id, revoked_at, revoked_reason) VALUES (%s, now(), %s)
               ON CONFLICT (edge_id) DO UPDATE
                  SET revoked_at = coalesce(edges.revoked_at, now()),
                      revoked_reason = excluded.revoked_reason""",
            (edge_id, reason or None),
        )
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice(edge_id)))


def reinstate_edge(dsn: str, edge_id: str) -> bool:
    """Lift an edge ban; returns False if the edge was not revoked."""
    with _transaction(dsn) as cur:
        cur.execute(
            "UPDATE edges SET revoked_at = NULL, revoked_reason = NULL"
            " WHERE edge_id = %s AND revoked_at IS NOT NULL",
            (edge_id,),
        )
        return bool(cur.rowcount > 0)


def revoke_certificate(dsn: str, serial: int, edge_id: str | None = None, reason: str = "") -> None:
    """Ban one certificate by serial number (the edge's other certificates stay valid)."""
    with _transaction(dsn) as cur:
        cur.execute(
            """INSERT INTO revoked_certificates (serial, edge_id, reason) VALUES (%s, %s, %s)
               ON CONFLICT (serial) DO NOTHING""",
            (serial, edge_id, reason or None),
        )
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice(edge_id, serial)))
