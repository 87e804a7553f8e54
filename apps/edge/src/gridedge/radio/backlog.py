"""What the radio link still owes the journal, and the log lines that make it visible.

Why: after an edge restart with a thousand meters, back-fill takes many
minutes (``poll_rate`` x ``poll_window`` intervals per second at most), and a
unit that is catching up looks exactly like a healthy one unless it says so.
:class:`Backlog` is measured by the poll scheduler at each overdue scan;
``gridedge health`` shows it (via ``RadioLink.stats()``) and
:class:`BacklogLog` writes one line when a backlog appears, one every
``backlog_log_every`` seconds while it lasts and one when it is gone.

Tests: tests/radio/test_link.py (test_backlog_*), tests/edge/test_health.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from twisted.logger import Logger

__all__ = ["Backlog", "BacklogLog"]


@dataclass(frozen=True, slots=True)
class Backlog:
    """Intervals known to be missing from the sink, over all meters.

    ``intervals`` counts intervals below a held record that are not held, and
    intervals of a meter that are overdue (module clock ``overdue_after`` past
    them); a meter heard for the first time counts its ``backfill`` window
    until its first poll says where its memory begins.  ``oldest`` is the
    interval end of the oldest owed interval (None when nothing is owed).
    """

    meters: int = 0
    intervals: int = 0
    oldest: int | None = None

    def __bool__(self) -> bool:
        return self.meters > 0


def _when(end: int | None) -> str:
    if end is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(end))


class BacklogLog:
    """Decides when a backlog is worth a log line: on change of state, then periodically."""

    log = Logger(namespace="gridedge.radio.backlog")

    def __init__(self, every: float) -> None:
        self.every = every
        self._since: float | None = None  # when the current backlog was first seen
        self._logged = 0.0

    def update(self, backlog: Backlog, held: int, queued: int, now: float) -> None:
        if not backlog:
            if self._since is not None:
                self.log.info("radio backlog cleared after {s:.0f} s", s=now - self._since)
                self._since = None
            return
        if self._since is not None and now - self._logged < self.every:
            return
        if self._since is None:
            self._since = now
        self._logged = now
        self.log.info(
            "radio backlog: {meters} meters owe {intervals} intervals, the oldest ending "
            "{oldest}; {held} records held in memory, {queued} meters queued for a poll",
            meters=backlog.meters, intervals=backlog.intervals, oldest=_when(backlog.oldest),
            held=held, queued=queued,
        )
