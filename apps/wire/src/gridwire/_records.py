"""Interval records, their status flags, and the columnar form used on the wire.

Why two forms: ``IntervalRecord`` is what application code reads and writes one
at a time; ``RecordColumns`` is what the batch codec works on (one tuple per
field), so that encoding and decoding run in C loops (``array``, ``zlib``,
``itertools``) instead of creating a Python object per record.  A
ReadingBatch converts between them lazily.

``IntervalRecord`` is a NamedTuple subclass: immutable, slotted (``__slots__ =
()``), cheap to build from a row, and validated when built by its constructor.

Tests: tests/wire/test_messages.py (validation, flags), tests/wire/test_batch.py,
tests/wire/test_roundtrip.py.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ._errors import ErrorCode, local_error

__all__ = ["FIELDS", "FIELD_RANGES", "Flags", "IntervalRecord", "RecordColumns"]


class Flags(enum.IntFlag):
    """Status bits of one interval; bits 4..15 are reserved and carried unchanged."""

    RELAY_OPEN = 0x01  #: the meter's load relay was open at the interval end
    TAMPER = 0x02  #: the meter reported a tamper switch or magnet during the interval
    OUTAGE = 0x04  #: supply was lost during the interval
    ESTIMATED = 0x08  #: values were estimated (gap filled), not measured


#: Field names in wire (column) order.
FIELDS = (
    "meter_id",
    "interval_end",
    "energy_wh",
    "max_demand_w",
    "voltage_dv",
    "current_ma",
    "power_factor",
    "flags",
)

#: Inclusive (low, high) range of every field.
FIELD_RANGES: dict[str, tuple[int, int]] = {
    "meter_id": (0, 2**32 - 1),
    "interval_end": (0, 2**32 - 1),
    "energy_wh": (0, 2**64 - 1),
    "max_demand_w": (0, 2**32 - 1),
    "voltage_dv": (0, 2**16 - 1),
    "current_ma": (0, 2**32 - 1),
    "power_factor": (-1000, 1000),
    "flags": (0, 2**16 - 1),
}

_RANGES = tuple(FIELD_RANGES[name] for name in FIELDS)


class _IntervalRecordFields(NamedTuple):
    meter_id: int
    interval_end: int
    energy_wh: int
    max_demand_w: int
    voltage_dv: int
    current_ma: int
    power_factor: int
    flags: int


class IntervalRecord(_IntervalRecordFields):
    """One meter's reading for one interval (normally 15 minutes).

    meter_id      u32, the meter's radio address
    interval_end  unix seconds (UTC) at the end of the interval
    energy_wh     cumulative active energy import register, Wh (never resets)
    max_demand_w  highest demand over the interval, W
    voltage_dv    RMS voltage at the interval end, 0.1 V
    current_ma    RMS current at the interval end, mA
    power_factor  per mille, -1000..1000 (negative: leading / export)
    flags         Flags bits
    """

    __slots__ = ()

    def __new__(
        cls,
        meter_id: int,
        interval_end: int,
        energy_wh: int,
        max_demand_w: int,
        voltage_dv: int,
        current_ma: int,
        power_factor: int,
        flags: int = 0,
    ) -> IntervalRecord:
        values = (
            meter_id,
            interval_end,
            energy_wh,
            max_demand_w,
            voltage_dv,
            current_ma,
            power_factor,
            int(flags),
        )
        for name, value, (low, high) in zip(FIELDS, values, _RANGES, strict=True):
            if type(value) is not int or not low <= value <= high:
                raise local_error(
                    ErrorCode.INVALID_FIELD, f"IntervalRecord.{name}={value!r} not in {low}..{high}"
                )
        return tuple.__new__(cls, values)

    @property
    def flag_set(self) -> Flags:
        """The flags as a Flags value (reserved bits included)."""
        return Flags(self.flags)


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """A batch of records stored field by field: ``columns.energy_wh[i]`` is record i's.

    Build it with ``RecordColumns.build`` (any iterables) or ``from_records``, or
    directly from eight tuples of ints; every way is validated, so invalid
    columns cannot exist.
    """

    meter_id: tuple[int, ...]
    interval_end: tuple[int, ...]
    energy_wh: tuple[int, ...]
    max_demand_w: tuple[int, ...]
    voltage_dv: tuple[int, ...]
    current_ma: tuple[int, ...]
    power_factor: tuple[int, ...]
    flags: tuple[int, ...]

    def __post_init__(self) -> None:
        columns = self.as_tuple()
        size = len(columns[0]) if type(columns[0]) is tuple else -1
        for name, column, (low, high) in zip(FIELDS, columns, _RANGES, strict=True):
            if type(column) is not tuple or len(column) != size:
                raise local_error(
                    ErrorCode.INVALID_FIELD,
                    f"RecordColumns.{name}: eight tuples of equal length needed (see build())",
                )
            if column and (
                not all(type(v) is int for v in column) or min(column) < low or max(column) > high
            ):
                raise local_error(
                    ErrorCode.INVALID_FIELD,
                    f"RecordColumns.{name}: values must be ints in {low}..{high} (see build())",
                )

    @classmethod
    def _trusted(cls, columns: Iterable[tuple[int, ...]]) -> RecordColumns:
        """Columns known to be valid (decoded and range-checked, or from records): no re-check."""
        made = object.__new__(cls)
        for name, column in zip(FIELDS, columns, strict=True):
            object.__setattr__(made, name, column)
        return made

    def __len__(self) -> int:
        return len(self.meter_id)

    def as_tuple(self) -> tuple[tuple[int, ...], ...]:
        """The eight columns in wire order."""
        return (
            self.meter_id,
            self.interval_end,
            self.energy_wh,
            self.max_demand_w,
            self.voltage_dv,
            self.current_ma,
            self.power_factor,
            self.flags,
        )

    def rows(self) -> zip[tuple[int, int, int, int, int, int, int, int]]:
        """Plain tuples in FIELDS order, one per record (cheap: no record objects)."""
        return zip(*self.as_tuple(), strict=True)

    def records(self) -> tuple[IntervalRecord, ...]:
        """The records as IntervalRecord objects (already validated, so not re-checked)."""
        make = IntervalRecord._make
        return tuple(map(make, zip(*self.as_tuple(), strict=True)))

    @classmethod
    def from_records(cls, records: Sequence[IntervalRecord]) -> RecordColumns:
        """Columns of already-validated records."""
        for record in records:
            if not isinstance(record, IntervalRecord):
                raise local_error(ErrorCode.INVALID_FIELD, f"not an IntervalRecord: {record!r}")
        if not records:
            return cls((), (), (), (), (), (), (), ())
        return cls._trusted(zip(*records, strict=True))

    @classmethod
    def build(cls, **columns: Iterable[int]) -> RecordColumns:
        """Validated columns from eight equally long sequences of ints, by field name.

        Accepts any iterables (lists, arrays, generators) and int subclasses such as
        Flags; the plain constructor wants tuples of plain ints.
        """
        if set(columns) != set(FIELDS):
            raise local_error(
                ErrorCode.INVALID_FIELD, f"columns must be exactly {', '.join(FIELDS)}"
            )
        values = []
        size = None
        for name, (low, high) in zip(FIELDS, _RANGES, strict=True):
            column = columns[name]
            try:
                col: tuple[int, ...] = tuple(column)
            except TypeError:
                raise local_error(ErrorCode.INVALID_FIELD, f"{name} is not a sequence") from None
            if size is None:
                size = len(col)
            elif len(col) != size:
                raise local_error(ErrorCode.INVALID_FIELD, "columns differ in length")
            if col:
                if not all(type(v) is int for v in col):
                    col = tuple(_as_int(name, v) for v in col)
                if min(col) < low or max(col) > high:
                    raise local_error(
                        ErrorCode.INVALID_FIELD, f"{name} values not in {low}..{high}"
                    )
            values.append(col)
        return cls._trusted(values)


def _as_int(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise local_error(ErrorCode.INVALID_FIELD, f"{name} value {value!r} is not an int")
