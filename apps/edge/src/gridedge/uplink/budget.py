"""The unit's monthly data budget (``[uplink] budget_mb_per_month``): pace, stretch, warn.

Why: a unit's SIM plan is a number of megabytes a month, and going over it costs
money or gets the line throttled.  The unit cannot send less data, only spend
fewer bytes per reading: fewer uploads (each one pays a frame, an Ack and TLS
records) and fewer heartbeats.  So when the month's usage runs ahead of pace,
the uplink *stretches* its upload deadline and its heartbeat; it never drops or
delays a reading beyond the stretched deadline, and events still go at once.

The rule (sans-IO: the uplink asks :meth:`DataBudget.stretch` with the month's
usage so far and the time):

* on pace means used <= budget x (elapsed part of the month); the first day
  counts as a whole day, so one busy morning does not trip it;
* ahead of pace by a ratio r > 1, the stretch is r squared (capped at
  ``MAX_STRETCH``): uploads and heartbeats are that many times rarer, which
  pulls spending back faster than it ran ahead;
* at or over the budget: ``MAX_STRETCH`` until the month ends;
* warnings: one event when usage first crosses 80% of the budget in a month,
  one at 100% (:meth:`crossed` returns each threshold once per month).

Tests: tests/edge/test_uplink_budget.py.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field

#: Uploads and heartbeats at most this many times rarer than configured.
MAX_STRETCH = 8.0
#: Usage thresholds (parts of the budget) that raise an event once a month.
THRESHOLDS = (0.8, 1.0)


def month_of(now: float) -> tuple[str, float, float]:
    """The UTC month of ``now``: its name ("2026-11"), its start and its length (seconds)."""
    t = time.gmtime(now)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    days = calendar.monthrange(t.tm_year, t.tm_mon)[1]
    return f"{t.tm_year:04d}-{t.tm_mon:02d}", float(start), days * 86400.0


@dataclass(slots=True)
class DataBudget:
    """A monthly budget in bytes (0: none) and the thresholds already reported."""

    budget_bytes: int
    _reported: dict[str, set[float]] = field(default_factory=dict)

    def stretch(self, used: int, now: float) -> float:
        """How many times rarer uploads and heartbeats should be (1.0: as configured)."""
        if self.budget_bytes <= 0:
            return 1.0
        if used >= self.budget_bytes:
            return MAX_STRETCH
        _, start, length = month_of(now)
        elapsed = max(86400.0, now - start)
        allowed = self.budget_bytes * min(1.0, elapsed / length)
        ratio = used / allowed
        return 1.0 if ratio <= 1.0 else min(MAX_STRETCH, ratio * ratio)

    def crossed(self, used: int, now: float) -> list[float]:
        """Thresholds newly crossed this month (each is reported once)."""
        if self.budget_bytes <= 0:
            return []
        month, _, _ = month_of(now)
        done = self._reported.setdefault(month, set())
        new = [t for t in THRESHOLDS if used >= t * self.budget_bytes and t not in done]
        done.update(new)
        return new

    def mark_reported(self, now: float, thresholds: list[float]) -> None:
        """Thresholds already reported this month (after a restart, from the journal's events)."""
        month, _, _ = month_of(now)
        self._reported.setdefault(month, set()).update(thresholds)
