"""When to try the cloud again: reconnect delays that reset only when the cloud admits the unit.

Why not ClientService's own count: it resets when TCP connects, so an edge the
cloud refuses after the TLS handshake (revoked, a poison batch, its database
down) came back at once, paying a full handshake each time: 39 attempts and
124 KB in 30 s, gigabytes a month on a metered 2G link.  Here a connection
counts as a success only once ``Welcome`` arrived, and what the cloud said in
its ``Error`` decides the next wait (docs/edge.md, "Backoff policy"):

* no Welcome and no Error (TCP refused, TLS failed, the link dropped) or Error
  SHUTTING_DOWN / TIMEOUT (the cloud restarts, the link stalled): equal-jitter
  exponential backoff, ``d * U(0.5, 1)`` with ``d = min(maximum, initial *
  factor**(n-1))``, n counting attempts since the last Welcome;
* Error with a ``retry_after`` hint: the hint, ``hint * U(1, 1.5)`` (never
  sooner than asked; the spread keeps a thousand units from coming back in
  the same second), capped at ``revoked``;
* Error UNAUTHORIZED (the unit or its certificate is revoked): ``revoked *
  U(0.5, 1)``; nothing the unit can do fixes it, an operator must;
* any other Error (a refusal), or a protocol error of ours (the two ends
  disagree, and would again): ``maximum * U(0.5, 1)`` at once.

The policy is pure decisions, no clock: ClientService asks it for each delay
(as its ``retryPolicy``; its own attempt count is ignored) and the uplink tells
it about Welcome and Error.

Tests: tests/edge/test_uplink_backoff.py, tests/edge/test_uplink_tls.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gridwire import Error, ErrorCode

#: Errors that say nothing against this unit: the cloud restarts, or the link stalled.
NOT_REFUSALS = frozenset({ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT})


@dataclass(slots=True)
class ReconnectPolicy:
    """The delay before each reconnect, from what happened since the last Welcome.

    The four numbers are the [uplink] ``backoff_*`` settings (defaults in
    gridedge.config.UplinkConfig, only there).
    """

    initial: float
    maximum: float
    factor: float
    revoked: float
    rng: Callable[[], float] = random.random
    #: attempts since the last Welcome
    failures: int = field(default=0, init=False)
    #: the Error that ended the last connection, if the cloud sent one
    refusal: Error | None = field(default=None, init=False)

    def welcomed(self) -> None:
        """The cloud admitted the unit: the next drop starts the backoff from ``initial``."""
        self.failures = 0
        self.refusal = None

    def refused(self, error: Error) -> None:
        """The session ended with ``error`` (the cloud's, or the one this unit sent for a
        protocol error); the next delay depends on it."""
        self.refusal = error

    def __call__(self, attempt: int) -> float:
        """ClientService's retryPolicy (its ``attempt`` resets on TCP connect: not used)."""
        return self.next_delay()

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; counts the attempt that just ended."""
        self.failures += 1
        error, self.refusal = self.refusal, None
        jitter = self.rng()
        if error is None or error.code in NOT_REFUSALS:
            base = min(self.maximum, self.initial * self.factor ** (self.failures - 1))
            return base * (0.5 + 0.5 * jitter)
        if error.code == ErrorCode.UNAUTHORIZED:
            return self.revoked * (0.5 + 0.5 * jitter)
        if error.retry_after:
            return min(self.revoked, error.retry_after * (1.0 + 0.5 * jitter))
        return self.maximum * (0.5 + 0.5 * jitter)
