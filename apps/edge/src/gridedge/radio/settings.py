"""The radio link's tuning: one frozen record, the one home of every default.

Why here and not in the configuration loader: the link, ``python -m
gridedge.radio`` and ``gridedge.toml``'s ``[radio]`` section all take these
values; the defaults and the rules for what is valid are written once, in
:class:`LinkSettings`, and the others read them from it (the loader names the
file and key when :class:`SettingError` says which field is wrong).
docs/edge.md has the table of keys; a test checks that it matches.

Tests: tests/radio/test_link.py, tests/edge/test_config.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from gridradio import MAX_POLL_COUNT

__all__ = ["LinkSettings", "SettingError"]


class SettingError(ValueError):
    """A setting is out of range; ``key`` is the field's name, the message says why."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Tuning of the radio link; the defaults suit a real mesh of a few thousand meters.

    Throughput of back-fill is ``poll_rate`` x ``poll_window`` intervals per
    second at most (80 with the defaults): raise them only as far as the mesh
    carries the polls.
    """

    poll_rate: float = 5.0  #: polls per second, sustained (token bucket)
    poll_burst: int = 10  #: polls that may go out back to back
    poll_window: int = MAX_POLL_COUNT  #: intervals asked for in one poll (1..16)
    max_polls_in_flight: int = 4  #: polls sent and not yet answered
    poll_timeout: float = 20.0  #: seconds to wait for a poll response
    backoff_initial: float = 10.0  #: first wait before re-polling a meter that did not answer
    backoff_max: float = 900.0  #: longest wait between polls of a meter that does not answer
    backfill: int = 96  #: intervals fetched before a newly found meter's first report
    overdue_after: int = 600  #: module-clock seconds after an interval end before polling for it
    max_held: int = 96  #: records held per meter while a gap below them is filled
    max_held_total: int = 50_000  #: records held for all meters together (~23 bytes each)
    scan_every: float = 5.0  #: seconds between scans for overdue meters
    backlog_log_every: float = 300.0  #: seconds between log lines while a backlog lasts
    relay_timeout: float = 30.0  #: seconds to wait for a relay confirmation
    relay_attempts: int = 3  #: sends of one relay command, first one included
    relay_retry_delay: float = 5.0  #: wait before re-sending after NO_RESPONSE or BUSY
    sink_retry: float = 1.0  #: wait before offering records again after the sink failed
    link_report_gap: float = 86400.0  #: least seconds between link quality events of a meter

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # Both numeric kinds are compared below; a bool is neither.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingError(f.name, f"expected a number, got {value!r}")
        for key in ("poll_rate", "poll_timeout", "backoff_initial", "relay_timeout",
                    "sink_retry", "backlog_log_every"):
            if getattr(self, key) <= 0:
                raise SettingError(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("poll_burst", "max_polls_in_flight", "max_held", "max_held_total",
                    "relay_attempts"):
            if getattr(self, key) < 1:
                raise SettingError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("backfill", "overdue_after", "scan_every", "relay_retry_delay",
                    "link_report_gap"):
            if getattr(self, key) < 0:
                raise SettingError(key, f"must be >= 0, got {getattr(self, key)}")
        if not 1 <= self.poll_window <= MAX_POLL_COUNT:
            raise SettingError(
                "poll_window", f"must be 1..{MAX_POLL_COUNT} (the protocol's limit), "
                f"got {self.poll_window}")
        if self.backoff_max < self.backoff_initial:
            raise SettingError("backoff_max", "must be >= backoff_initial")
