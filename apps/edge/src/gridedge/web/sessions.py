"""Logins: session tokens with their CSRF token, and the per-address limit on failed logins.

Why sessions are on /data: a page left open must keep working after the unit restarts (the
live view reconnects by itself), so a session outlives the process.  Only a SHA-256 digest of
each session token is stored (a copy of the file does not log anyone in), and the file is
written only at login and logout, never per request (flash wear).  Expiry is by inactivity,
tracked in memory; after a restart a session counts from the restart.

The CSRF token is per session and random; every state-changing request must carry it (form
field ``csrf`` or header ``X-CSRF-Token``) and is refused otherwise, on top of the
SameSite=Strict cookie.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .files import read_json, write_json

__all__ = ["LoginLimiter", "Session", "Sessions"]

#: At most this many sessions are kept; the oldest goes first (bounds the file and memory).
MAX_SESSIONS = 64


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Session tokens by digest, in ``sessions.json``."""

    def __init__(self, folder: Path, ttl: float, clock: Callable[[], float]) -> None:
        self.path = folder / "sessions.json"
        self.ttl = ttl
        self.clock = clock
        stored: dict[str, dict[str, str]] = read_json(self.path, {})
        self._sessions = {k: Session(v["user"], v["csrf"]) for k, v in stored.items()}
        now = clock()
        self._seen = dict.fromkeys(self._sessions, now)

    def open(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: its token (for the cookie) and the session."""
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(24))
        key = _digest(token)
        self._sessions[key] = session
        self._seen[key] = self.clock()
        while len(self._sessions) > MAX_SESSIONS:
            oldest = min(self._seen, key=self._seen.__getitem__)
            self._forget(oldest)
        self._save()
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The session of ``token`` if it is open and not expired (and marks it used)."""
        if not token:
            return None
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - self._seen[key] > self.ttl:
            self._forget(key)
            self._save()
            return None
        self._seen[key] = now
        return session

    def close(self, token: str | None) -> None:
        if token and _digest(token) in self._sessions:
            self._forget(_digest(token))
            self._save()

    def close_user(self, user: str) -> None:
        """End every session of ``user`` (account deleted or password changed)."""
        for key in [k for k, s in self._sessions.items() if s.user == user]:
            self._forget(key)
        self._save()

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())

    def _forget(self, key: str) -> None:
        self._sessions.pop(key, None)
        self._seen.pop(key, None)

    def _save(self) -> None:
        write_json(self.path, {k: {"user": s.user, "csrf": s.csrf}
                               for k, s in self._sessions.items()})


class LoginLimiter:
    """At most ``attempts`` failed logins per address within ``window`` seconds.

    Memory is bounded: at most ``max_addresses`` addresses are tracked (the stalest dropped),
    each with at most ``attempts`` timestamps.
    """

    def __init__(self, attempts: int, window: float, clock: Callable[[], float],
                 max_addresses: int = 1024) -> None:
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        now = self.clock()
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        if len(failures) < self.attempts:
            return 0.0
        return max(0.0, failures[0] + self.window - now)

    def failed(self, address: str) -> None:
        failures = self._failures.setdefault(address, collections.deque(maxlen=self.attempts))
        failures.append(self.clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
