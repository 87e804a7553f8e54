"""Value ranges: what a value may be so that both ends can store it, beyond what encodes.

Why apart from the wire bounds: the wire carries ``energy_wh`` and
``EventReport.time`` as u64 and text as any UTF-8, so that the encoding never
has to change; but the cloud stores readings in PostgreSQL (``bigint``,
``timestamptz``, ``text``), and a value outside those types would fail its
batch for ever.  So the protocol states narrower *value ranges*
(docs/protocol.md, "Value ranges") and both ends call the functions here:
the edge refuses such values before journalling them, the cloud sets aside
(dead-letters) any that still arrive, from an older edge for instance.  The
decoder does not enforce them: a frame with such a value is well-formed, and
refusing it would make the peer resend it for ever.

Tests: tests/wire/test_ranges.py.
"""

from __future__ import annotations

from ._messages import EventReport
from ._records import FIELD_RANGES, FIELDS, RecordColumns

__all__ = ["EVENT_TIME_RANGE", "VALUE_RANGES", "event_problem", "record_problems"]

#: Inclusive (low, high) value range of every IntervalRecord field: the wire's bounds,
#: except energy_wh, which must fit a signed 64-bit integer (SQL ``bigint``).
VALUE_RANGES: dict[str, tuple[int, int]] = {**FIELD_RANGES, "energy_wh": (0, 2**63 - 1)}

#: Inclusive range of EventReport.time: unix seconds that fit u32, like interval_end.
EVENT_TIME_RANGE = (0, 2**32 - 1)

_RANGES = tuple(VALUE_RANGES[name] for name in FIELDS)


def record_problems(columns: RecordColumns) -> dict[int, str]:
    """Records outside the value ranges: {index in the batch: why}; empty when all are fine.

    Cheap when all are fine (one min and max per column, in C); only a column
    with a value out of range is looked at record by record.
    """
    problems: dict[int, str] = {}
    for name, column, (low, high) in zip(FIELDS, columns.as_tuple(), _RANGES, strict=True):
        if column and (min(column) < low or max(column) > high):
            for index, value in enumerate(column):
                if not low <= value <= high and index not in problems:
                    problems[index] = f"{name}={value} not in {low}..{high}"
    return problems


def event_problem(event: EventReport) -> str | None:
    """Why ``event`` is outside the value ranges, or None when it is fine."""
    low, high = EVENT_TIME_RANGE
    if not low <= event.time <= high:
        return f"time={event.time} not in {low}..{high}"
    if "\x00" in event.detail:
        return "detail contains a NUL character (U+0000)"
    return None
