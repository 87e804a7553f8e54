"""When to upload: one upload per interval on a metered link, not one per second.

Why: every upload costs the same fixed overhead whatever it carries (a frame
header, an Ack, two TLS records of 22 bytes each, and a compression dictionary
that starts cold), while the meters' reports of one 15-minute interval trickle
in over about five minutes.  Sending whatever arrived within a second (the old
``batch_linger`` rule) made 14,000-21,000 uploads a day of 4-7 readings for
1,000 meters.  Waiting until an interval's readings are in makes one upload of
~1,000 readings instead, and the per-reading cost falls to what the batch
encoding itself costs.

The rules (sans-IO: the uplink's Link feeds :meth:`UploadSchedule.add` each
journal entry once, in sequence order, and asks :meth:`UploadSchedule.due`):

* a reading waits, until
  1. its interval is complete: as many readings with that interval end have
     arrived as the unit expects (``expected()``: the meters the radio link
     knows as joined; 0 means "unknown" and leaves only the other rules), or
  2. the oldest waiting reading has waited ``deadline`` seconds (the bound on
     report-to-upload latency; stretched by the data budget, never dropped), or
  3. the waiting readings fill a batch (``batch_records``);
* anything that is not a reading (an event such as a tamper alarm, a command
  result) is due at once, and the readings before it go along, since the
  journal's sequence order is kept on the wire; except the events in
  ``NOT_URGENT`` (a meter's link quality, gridedge.linkquality), which wait with
  the readings for the next upload: sent at once, a day's first link reports
  added ten uploads and 0.8 byte per reading in make bench-link.

When an upload is due, everything seen so far goes (the Link splits it into
batches within its window) and the schedule starts over with :meth:`reset`.

Tests: tests/edge/test_uplink_schedule.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gridwire import AlarmKind, IntervalRecord

#: Event kinds that wait for the next upload instead of making one (see the rules above).
NOT_URGENT = frozenset({AlarmKind.LINK_QUALITY})


@dataclass(slots=True)
class UploadSchedule:
    """What waits, and whether it is time to send it."""

    deadline: float
    batch_records: int
    expected: Callable[[], int] = lambda: 0
    #: Set by the data budget (gridedge.uplink.budget): > 1 makes the deadline that many
    #: times longer and turns the "interval complete" rule off.
    stretch: float = 1.0
    waiting: int = 0
    urgent: bool = False
    oldest_at: float | None = None
    #: interval end -> readings of it waiting; and how many were expected when it began
    _counts: dict[int, int] = field(default_factory=dict)
    _expected: dict[int, int] = field(default_factory=dict)
    _complete: bool = False

    def add(self, entry: object, now: float) -> None:
        """A journal entry not sent yet, in sequence order, seen at ``now``."""
        if self.oldest_at is None:
            self.oldest_at = now
        if not isinstance(entry, IntervalRecord):
            if getattr(entry, "kind", None) not in NOT_URGENT:
                self.urgent = True
            return
        self.waiting += 1
        end = entry.interval_end
        count = self._counts.get(end, 0) + 1
        self._counts[end] = count
        expected = self._expected.get(end)
        if expected is None:
            # Asked once per interval: the radio link's count of joined meters is a scan.
            expected = self._expected[end] = self.expected()
        if expected > 0 and count >= expected:
            self._complete = True

    def due(self, now: float) -> bool:
        """Whether what waits should go now."""
        if self.oldest_at is None:
            return False
        return (self.urgent or (self._complete and self.stretch <= 1.0)
                or self.waiting >= self.batch_records
                or now - self.oldest_at >= self.deadline * self.stretch)

    def wait(self, now: float) -> float | None:
        """Seconds until the deadline makes an upload due (None: nothing waits)."""
        if self.oldest_at is None:
            return None
        return max(0.0, self.oldest_at + self.deadline * self.stretch - now)

    def reset(self) -> None:
        """Everything seen so far is being sent: start over."""
        self.waiting = 0
        self.urgent = False
        self.oldest_at = None
        self._counts.clear()
        self._expected.clear()
        self._complete = False
