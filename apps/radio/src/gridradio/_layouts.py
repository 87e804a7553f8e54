"""The byte layout of every radio frame, as data: one table drives the codec and the docs.

Why a table: every frame body is a few big-endian integers, some of them
enumerations, and the poll response adds a list of records.  Written as code
that was ten hand-made pack/unpack pairs which had to agree with each other and
with docs/radio.md; written as data it is one row per field, read once at
import by ``_codec`` (which builds each frame type's encoder and decoder from
it) and by the ``describe_*`` functions, whose Markdown tables are the ones in
docs/radio.md (a test checks that they still are).

A layout lists the frame's attributes in wire order.  Each is one of:

* :class:`Field` -- one integer (``u8 u16 u32 i8 i16``), optionally narrowed
  to an enumeration, to 0/1 (a ``bool`` attribute) or to a range;
* :class:`Record` -- a whole interval record: meter_id u32, then ``RECORD``;
* :class:`Records` -- a u8 count ``n``, then ``n`` times ``RECORD``, whose
  meter id is the frame's ``meter_id`` (it is not repeated on the wire).

``RECORD`` is the record without its meter id: :data:`RECORD_FIELDS` minus
the first.  Every integer is big-endian.

Tests: tests/radio_codec/test_radio_docs.py (tables match docs/radio.md),
tests/radio_codec/test_frames.py (the codec built from them).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from gridwire import Flags

from ._frames import (
    Frame,
    FrameType,
    IntervalReport,
    LeaveReason,
    MeshStatus,
    MeterJoin,
    MeterLeave,
    ModuleReset,
    ModuleStatus,
    PollRequest,
    PollResponse,
    PollStatus,
    RelayCommand,
    RelayConfirm,
    RelayState,
    RelayStatus,
    ResetReason,
)

__all__ = [
    "EDGE",
    "LAYOUTS",
    "MODULE",
    "RECORD_FIELDS",
    "RECORD_SIZE",
    "Field",
    "Layout",
    "Record",
    "Records",
    "describe_frames",
    "describe_record",
    "describe_values",
    "size",
]

#: struct format character of each wire type.
CODES = {"u8": "B", "u16": "H", "u32": "I", "i8": "b", "i16": "h"}

#: Frame sent by the radio module to the edge, or by the edge to the module.
MODULE = "M"
EDGE = "E"


@dataclass(frozen=True, slots=True)
class Field:
    """One integer of a frame, named as the frame's attribute.

    ``values`` narrows what the wire type allows; any other value makes the
    frame invalid: an ``IntEnum`` (the attribute holds its member), ``bool``
    (0 or 1, the attribute holds a bool) or a ``range``.  ``meaning`` is for
    the record table of the docs.
    """

    name: str
    wire: str  #: u8, u16, u32, i8 or i16
    values: type[enum.IntEnum] | type[bool] | range | None = None
    meaning: str = ""

    @property
    def code(self) -> str:
        """The struct format character."""
        return CODES[self.wire]


@dataclass(frozen=True, slots=True)
class Record:
    """The frame's ``record`` attribute: one interval record, meter id included."""

    name: str = "record"


@dataclass(frozen=True, slots=True)
class Records:
    """The frame's ``records``: a u8 count, then that many records of the frame's meter."""

    name: str = "records"
    meter: str = "meter_id"  #: the frame attribute that is every record's meter id


Part = Field | Record | Records


@dataclass(frozen=True, slots=True)
class Layout:
    """How one frame type's attributes are laid out after its type byte."""

    frame: type[Frame]
    sender: str  #: MODULE or EDGE
    parts: tuple[Part, ...]

    @property
    def kind(self) -> FrameType:
        """The frame type (its first byte)."""
        return self.frame.TYPE


def _flags_meaning() -> str:
    bits = ", ".join(f"{flag.value.bit_length() - 1} {flag.name}" for flag in Flags)
    return f"bit {bits}; others reserved, sent as 0, carried unchanged"


#: The fields of ``gridwire.IntervalRecord`` as the radio carries them, in wire order.
RECORD_FIELDS = (
    Field("meter_id", "u32", meaning="the meter's radio address"),
    Field("interval_end", "u32", meaning="Unix seconds, multiple of 900"),
    Field("energy_wh", "u32", meaning="cumulative active energy import register, Wh"),
    Field("max_demand_w", "u32", meaning="highest demand during the interval, W"),
    Field("voltage_dv", "u16", meaning="RMS voltage at the interval end, 0.1 V"),
    Field("current_ma", "u32", meaning="RMS current at the interval end, mA"),
    Field("power_factor", "i16", range(-1000, 1001), meaning="per mille, -1000..1000"),
    Field("flags", "u16", meaning=_flags_meaning()),
)

_CMD_ID = Field("cmd_id", "u16")
_METER_ID = Field("meter_id", "u32")
_FIRST_END = Field("first_end", "u32")
_COUNT = Field("count", "u8")
_OPEN = Field("open", "u8", bool)
_PARENT = (Field("parent_id", "u32"), Field("hops", "u8"), Field("rssi", "i8"))

#: Every frame type's layout, in type order.
LAYOUTS = (
    Layout(IntervalReport, MODULE, (Record(),)),
    Layout(PollRequest, EDGE, (_CMD_ID, _METER_ID, _FIRST_END, _COUNT)),
    Layout(
        PollResponse,
        MODULE,
        (
            _CMD_ID,
            _METER_ID,
            _FIRST_END,
            _COUNT,
            Field("status", "u8", PollStatus),
            Field("oldest_end", "u32"),
            Field("newest_end", "u32"),
            Records(),
        ),
    ),
    Layout(RelayCommand, EDGE, (_CMD_ID, _METER_ID, _OPEN)),
    Layout(
        RelayConfirm,
        MODULE,
        (
            _CMD_ID,
            _METER_ID,
            _OPEN,
            Field("status", "u8", RelayStatus),
            Field("relay", "u8", RelayState),
        ),
    ),
    Layout(MeterJoin, MODULE, (_METER_ID, *_PARENT)),
    Layout(MeterLeave, MODULE, (_METER_ID, Field("reason", "u8", LeaveReason))),
    Layout(MeshStatus, MODULE, (_METER_ID, *_PARENT)),
    Layout(
        ModuleStatus,
        MODULE,
        (
            Field("module_time", "u32"),
            Field("uptime", "u32"),
            Field("meters_joined", "u16"),
            Field("queue_depth", "u16"),
            Field("firmware", "u16"),
        ),
    ),
    Layout(
        ModuleReset,
        MODULE,
        (
            Field("module_time", "u32"),
            Field("reason", "u8", ResetReason),
            Field("boot_count", "u16"),
        ),
    ),
)


def size(fields: tuple[Field, ...]) -> int:
    """Bytes the fields take on the wire."""
    return struct.calcsize(">" + "".join(field.code for field in fields))


#: Size of ``RECORD``, the record without its meter id.
RECORD_SIZE = size(RECORD_FIELDS[1:])


def _body(layout: Layout) -> str:
    words: list[str] = []
    fixed = 0
    repeated = False
    for part in layout.parts:
        if isinstance(part, Field):
            words.append(f"{part.name} {part.wire}")
            fixed += size((part,))
        elif isinstance(part, Record):
            words.append(f"{RECORD_FIELDS[0].name} {RECORD_FIELDS[0].wire}, RECORD")
            fixed += size(RECORD_FIELDS)
        else:
            words.append("n u8, n x RECORD")
            fixed += 1
            repeated = True
    sizes = f"{fixed} + {RECORD_SIZE}n" if repeated else f"{fixed}"
    return f"{', '.join(words)} ({sizes})"


def describe_frames() -> str:
    """The frame types and their bodies as a Markdown table (pasted into docs/radio.md)."""
    lines = ["| type | name | dir | body |", "| --- | --- | --- | --- |"]
    for layout in LAYOUTS:
        kind = layout.kind
        lines.append(f"| 0x{kind:02X} | {kind.name} | {layout.sender} | {_body(layout)} |")
    return "\n".join(lines)


def describe_record() -> str:
    """The interval record's fields as a Markdown table (pasted into docs/radio.md)."""
    lines = ["| field | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| {f.name} | {f.wire} | {f.meaning} |" for f in RECORD_FIELDS]
    return "\n".join(lines)


def _values(values: type[enum.IntEnum] | type[bool] | range) -> str:
    if isinstance(values, range):
        return f"{values.start}..{values.stop - 1}"
    if values is bool:
        return "0 false, 1 true"
    assert issubclass(values, enum.IntEnum)
    return ", ".join(f"{member.value} {member.name}" for member in values)


def describe_values() -> str:
    """Every field narrower than its type, and what it allows, as a Markdown table."""
    lines = ["| frame | field | values |", "| --- | --- | --- |"]
    rows = [("RECORD", field) for field in RECORD_FIELDS]
    for layout in LAYOUTS:
        rows += [(layout.kind.name, p) for p in layout.parts if isinstance(p, Field)]
    for where, field in rows:
        if field.values is not None:
            lines.append(f"| {where} | {field.name} | {_values(field.values)} |")
    return "\n".join(lines)
