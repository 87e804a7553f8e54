"""The interval record the radio link hands to the journal.

The radio protocol carries exactly the fields of ``gridwire.IntervalRecord``,
so the edge uses that type end to end: a record decoded from a radio frame is
the very object the uplink later batches, with no conversion step where a
field could be lost or mixed up.

Tests: tests/radio/test_frames.py.
"""

from __future__ import annotations

from gridwire import Flags, IntervalRecord

__all__ = ["INTERVAL_SECONDS", "Flags", "IntervalRecord"]

#: Length of one metering interval.  Fixed by the radio protocol (docs/radio.md):
#: interval ends are multiples of this many seconds since the Unix epoch.
INTERVAL_SECONDS = 900
