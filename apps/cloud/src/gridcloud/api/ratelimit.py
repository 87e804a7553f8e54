"""Per-key request rate limit: a token bucket for each key, in this process.

Why in-process: the limit protects PostgreSQL and the other users from one
runaway client, which needs no precision across processes.  Behind a load
balancer with N ``gridcloud api`` processes each enforces its own bucket, so a
key may reach up to N times the configured rate (docs/api.md says so).  A
shared limit would cost a database write per request.

Sans-IO: the time comes from the caller's clock (``task.Clock`` in tests).

Tests: tests/cloud/test_api_auth.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """``rate`` requests per second per key, with bursts of up to ``burst``."""

    #: buckets kept at most (full ones are forgotten first; a full bucket is the default)
    MAX_KEYS = 10_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[bytes, _Bucket] = {}

    def take(self, key: bytes, now: float) -> float:
        """Spend one token of ``key``'s bucket: 0.0 if allowed, else seconds until one is due."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if b.tokens + (now - b.stamp) * self.rate >= self.burst:
                del self._buckets[key]


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
