"""The unit's health summary: what an EventReport of kind HEALTH_SUMMARY (0x8006) says.

Why an event and this format (docs/protocol.md, "Health summary"): the link is
metered, so the summary is one short line of ``key=value`` pairs (about 70
bytes) in the detail of an event the unit journals every ``[health]
summary_interval``; riding the journal's exactly-once path means no new message
type, no acknowledgement of its own, and a v1/v2 cloud that does not know the
kind stores it as an ordinary event.  Values are unsigned integers; a key the
unit cannot fill (no radio, no /proc) is left out, and a reader ignores keys it
does not know, so fields can be added without a version change.

Tests: tests/wire/test_health_detail.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ._errors import ErrorCode, local_error
from ._limits import MAX_TEXT

__all__ = ["HealthSummary"]

#: attribute -> key on the wire (short: every byte is paid for)
_KEYS = {
    "journal_backlog": "b",
    "journal_oldest_age": "a",
    "last_radio_frame": "f",
    "disk_free_kib": "d",
    "disk_total_kib": "dt",
    "memory_available_kib": "m",
    "memory_total_kib": "mt",
    "uptime": "u",
    "gridedge_uptime": "g",
    "restarts": "r",
}
_ATTRS = {key: attr for attr, key in _KEYS.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSummary:
    """A unit's state in a few numbers (None: not known).

    journal_backlog: entries waiting for the cloud; journal_oldest_age: seconds the oldest
    has waited; last_radio_frame: unix seconds of the last good radio frame; disk_*: the
    data partition, KiB; memory_*: MemAvailable/MemTotal, KiB; uptime: seconds since the
    unit booted; gridedge_uptime: since gridedge started; restarts: restarts of gridedge's
    supervised parts since it started.
    """

    journal_backlog: int | None = None
    journal_oldest_age: int | None = None
    last_radio_frame: int | None = None
    disk_free_kib: int | None = None
    disk_total_kib: int | None = None
    memory_available_kib: int | None = None
    memory_total_kib: int | None = None
    uptime: int | None = None
    gridedge_uptime: int | None = None
    restarts: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (type(value) is not int or not 0 <= value < 1 << 64):
                raise local_error(ErrorCode.INVALID_FIELD,
                                  f"HealthSummary.{f.name} must be an int in 0..2**64-1")

    def to_detail(self) -> str:
        """The EventReport detail: ``key=value`` pairs, space separated, unknown ones left out."""
        text = " ".join(f"{_KEYS[f.name]}={getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) is not None)
        assert len(text) <= MAX_TEXT
        return text

    @classmethod
    def from_detail(cls, detail: str) -> HealthSummary:
        """Parse a detail; unknown keys are skipped; ValueError for a malformed pair."""
        values: dict[str, int] = {}
        for pair in detail.split():
            key, sep, value = pair.partition("=")
            if not sep or not value.isdigit() or not value.isascii():
                raise ValueError(f"malformed health summary pair {pair!r}")
            attr = _ATTRS.get(key)
            if attr is not None:
                values[attr] = int(value)
        try:
            return cls(**values)
        except Exception as exc:
            raise ValueError(str(exc)) from None
