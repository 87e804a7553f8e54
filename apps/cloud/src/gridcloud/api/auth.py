"""Which key a request came with: looked up in PostgreSQL, remembered for at most a second.

Why a cache: looking the key up was one PostgreSQL round trip on every request,
as long as the query the request was for (the edge list).  A key's row changes
only when it is revoked or expires, so each ``gridcloud api`` process keeps what
it read for :data:`KEY_CACHE_SECONDS`:

- a key revoked with ``gridcloud apikey revoke`` (or by another API process)
  stops working here within that time; one revoked through *this* process
  (``DELETE /v1/keys/{name}``) at once;
- a key's expiry is checked on every request against the time left that
  PostgreSQL reported (measured on the injected clock), so it is exact;
- an unknown key is never remembered: a key made a moment ago works at once,
  and guessing keys cannot fill the cache (it holds only keys that exist).

``last_used_at`` is written (without waiting for it) when a lookup finds it
older than :data:`LAST_USED_EVERY`: at most one write per key per minute per
process, never one per request.

:class:`KeyCache` is sans-IO (the caller passes the time), :class:`Authenticator`
does the lookups over the API's pool.

Tests: tests/cloud/test_api_auth.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from .database import Database

log = Logger(namespace="gridcloud.api")

#: How long a process trusts what it read about a key (seconds): the bound on how long a
#: key revoked elsewhere keeps working here.
KEY_CACHE_SECONDS = 1.0

#: How often a key's last_used_at is written at most (seconds).
LAST_USED_EVERY = 60.0

LOOKUP_SQL = """
SELECT name, scopes, edges, revoked_at IS NOT NULL,
       extract(epoch FROM expires_at - now())::float8,
       last_used_at IS NULL OR last_used_at < now() - make_interval(secs => %s)
  FROM api_keys WHERE key_sha256 = %s
"""

TOUCH_SQL = "UPDATE api_keys SET last_used_at = now() WHERE key_sha256 = %s"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a request needs to know about its key, as read at ``read_at``."""

    name: str
    scopes: tuple[str, ...]
    #: the edges the key may see; None: every edge
    edges: tuple[str, ...] | None
    revoked: bool
    #: clock time at which the key expires (None: never)
    expires_at: float | None
    read_at: float

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class KeyCache:
    """Key records by key digest, each trusted for ``ttl`` seconds after it was read."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._records: dict[bytes, KeyRecord] = {}

    def get(self, digest: bytes, now: float) -> KeyRecord | None:
        """The record of ``digest`` if read less than ``ttl`` ago, else None (look it up)."""
        record = self._records.get(digest)
        if record is None:
            return None
        if not 0 <= now - record.read_at < self.ttl:
            del self._records[digest]
            return None
        return record

    def put(self, digest: bytes, record: KeyRecord) -> None:
        self._records[digest] = record

    def forget(self, name: str) -> None:
        """Drop the key named ``name`` (revoked through this process: effective at once)."""
        for digest in [d for d, r in self._records.items() if r.name == name]:
            del self._records[digest]


class Authenticator:
    """Key records for requests: from the cache, else from PostgreSQL (and then cached)."""

    def __init__(self, db: Database, clock: Any, ttl: float = KEY_CACHE_SECONDS) -> None:
        self._db = db
        self._clock = clock
        self.cache = KeyCache(ttl)

    async def lookup(self, digest: bytes) -> KeyRecord | None:
        """The record of the key with this digest; None if there is no such key."""
        now = self._clock.seconds()
        record = self.cache.get(digest, now)
        if record is not None:
            return record
        rows = await self._db.rows(LOOKUP_SQL, (LAST_USED_EVERY, digest))
        if not rows:
            return None
        name, scopes, edges, revoked, expires_in, stale = rows[0]
        record = KeyRecord(
            name, tuple(scopes), tuple(edges) if edges is not None else None, bool(revoked),
            now + expires_in if expires_in is not None else None, now,
        )
        self.cache.put(digest, record)
        if stale and not revoked and not record.expired(now):
            self._db.run(TOUCH_SQL, (digest,)).addErrback(
                lambda f: log.info("last_used_at not recorded: {why}", why=f.getErrorMessage())
            )
        return record

    def forget(self, name: str) -> None:
        self.cache.forget(name)
