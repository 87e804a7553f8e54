"""API keys: made at random, shown once, stored as their SHA-256, with scopes and an expiry.

Why SHA-256 and not a password hash (bcrypt, scrypt): a key is 32 random bytes
(256 bits), so there is nothing to guess even with the hash in hand; slow hashes
protect low-entropy passwords.  A plain hash also lets the API find the key with
one unique-index probe per request instead of trying every row.

Scopes: ``read`` (every GET), ``write`` (changes to edges and meters, for the
commands to come), ``admin`` (managing keys).  A key may be limited to a list of
edges; it then sees only those (and their meters, readings, events, feed).

The admin functions here are blocking psycopg2 (``gridcloud apikey``, tests);
the API server looks keys up through its txpostgres pool (gridcloud.api.auth).

Tests: tests/cloud/test_api_auth.py.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import psycopg2.extensions

SCOPES = ("read", "write", "admin")

#: Every key starts with this, so a leaked one is recognisable (secret scanners).
KEY_PREFIX = "gck_"


class ApiKeyError(ValueError):
    """A key cannot be made as asked (bad name or scope, name taken)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What is stored about a key (never the key itself)."""

    name: str
    prefix: str
    scopes: tuple[str, ...]
    edges: tuple[str, ...] | None
    created_at: datetime.datetime
    last_used_at: datetime.datetime | None
    expires_at: datetime.datetime | None
    revoked_at: datetime.datetime | None


def new_key() -> str:
    """A fresh random key: ``gck_`` and 43 URL-safe characters (32 bytes)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    """What is stored and looked up: the SHA-256 of the key's UTF-8 bytes."""
    return hashlib.sha256(key.encode()).digest()


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ApiKeyError(f"scopes must be among {', '.join(SCOPES)}, got {', '.join(scopes)}")
    return tuple(s for s in SCOPES if s in scopes)


INSERT_SQL = """
INSERT INTO api_keys (name, key_sha256, prefix, scopes, edges, expires_at)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING created_at
"""

LIST_SQL = """
SELECT name, prefix, scopes, edges, created_at, last_used_at, expires_at, revoked_at
  FROM api_keys ORDER BY name
"""

REVOKE_SQL = "UPDATE api_keys SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL"


def row_to_info(row: Sequence[object]) -> KeyInfo:
    name, prefix, scopes, edges, created, used, expires, revoked = row
    return KeyInfo(
        str(name),
        str(prefix),
        tuple(scopes),  # type: ignore[arg-type]
        tuple(edges) if edges is not None else None,  # type: ignore[arg-type]
        created,  # type: ignore[arg-type]
        used,  # type: ignore[arg-type]
        expires,  # type: ignore[arg-type]
        revoked,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def _cursor(dsn: str) -> Iterator[psycopg2.extensions.cursor]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def create_key(
    dsn: str,
    name: str,
    scopes: Sequence[str],
    *,
    expires_at: datetime.datetime | None = None,
    edges: Sequence[str] | None = None,
) -> str:
    """Store a new key named ``name``; return the key (the only time it is ever seen)."""
    key = new_key()
    try:
        with _cursor(dsn) as cur:
            cur.execute(
                INSERT_SQL,
                (name, digest(key), key[:10], list(check_scopes(scopes)),
                 list(edges) if edges is not None else None, expires_at),
            )
    except psycopg2.errors.UniqueViolation:
        raise ApiKeyError(f"a key named {name!r} exists already") from None
    except psycopg2.errors.CheckViolation:
        raise ApiKeyError(f"bad key name {name!r}: letters, digits, . _ - (max 64)") from None
    return key


def list_keys(dsn: str) -> list[KeyInfo]:
    with _cursor(dsn) as cur:
        cur.execute(LIST_SQL)
        return [row_to_info(row) for row in cur.fetchall()]


def revoke_key(dsn: str, name: str) -> bool:
    """Revoke the key named ``name`` at once; False if there is none (or it was revoked)."""
    with _cursor(dsn) as cur:
        cur.execute(REVOKE_SQL, (name,))
        return bool(cur.rowcount > 0)
