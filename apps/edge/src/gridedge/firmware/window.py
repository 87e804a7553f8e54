"""When a reboot may happen: at once, or in the maintenance window of ``[firmware]``.

Tests: tests/edge/test_firmware_agent.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["seconds_until_window"]


def seconds_until_window(now: float, window: tuple[int, int],
                         localtime: Callable[[float], time.struct_time] = time.localtime) -> float:
    """Seconds from ``now`` to the next time inside ``window`` (minutes since local midnight,
    start and end; an end before the start spans midnight); 0 when ``now`` is inside."""
    t = localtime(now)
    minute = t.tm_hour * 60 + t.tm_min + t.tm_sec / 60
    start, end = window
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if inside:
        return 0.0
    return ((start - minute) % 1440) * 60
