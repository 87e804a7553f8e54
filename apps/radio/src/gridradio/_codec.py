"""Frame payloads: frame object <-> type byte, body and CRC, built from the layout table.

Contract (sans-IO, in the style of h11): :func:`decode_payload` takes one
unstuffed frame (type byte, body, CRC) and returns a frame object or raises
:class:`FrameError` naming what was wrong; :func:`encode_payload` is its
inverse.  No I/O, no clocks, no state.

Why compile the table: at import, each layout of ``_layouts.LAYOUTS`` becomes
one encoder and one decoder closure holding a precompiled ``struct.Struct``,
the list of fields to check and the way to build the frame, so the per-frame
work is what a hand-written pair would do (one pack or one ``unpack_from``,
no intermediate body slice), while the layouts stay data.  The decoder checks
every narrowed field (enumerations, 0/1, ranges) before building the frame;
the frame's own constructor checks the rest (poll counts, record ranges).

Tests: tests/radio_codec/test_frames.py (round trips, fuzzing, worked examples).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Sequence
from functools import partial
from operator import attrgetter
from typing import Any, NoReturn

from gridwire import IntervalRecord

from ._crc import crc16, frame_ok
from ._frames import Frame, FrameError
from ._layouts import LAYOUTS, RECORD_FIELDS, Field, Layout, Record, Records

__all__ = ["decode_payload", "encode_payload"]

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Frame]
#: (index in the unpacked values, lowest and highest value allowed, field name) of each
#: narrowed field: a chained comparison is three times faster than ``in range(...)``.
Check = tuple[int, int, int, str]

#: A record from values already checked (by struct and the range checks): IntervalRecord's
#: own check would repeat them, in Python.
_make_record = partial(tuple.__new__, IntervalRecord)
_OVERHEAD = 3  # type byte and CRC


def _struct(fields: Sequence[Field]) -> struct.Struct:
    return struct.Struct(">" + "".join(field.code for field in fields))


def _bounds(field: Field) -> tuple[int, int]:
    """Lowest and highest value of a narrowed field (an enumeration must have no gaps)."""
    values = field.values
    if isinstance(values, range):
        return values.start, values.stop - 1
    if values is bool:
        return 0, 1
    assert values is not None
    numbers = sorted(member.value for member in values)
    if numbers != list(range(numbers[0], numbers[-1] + 1)):
        raise TypeError(f"{field.name}: the codec checks ranges; {values.__name__} has gaps")
    return numbers[0], numbers[-1]


def _checks(fields: Sequence[Field]) -> tuple[Check, ...]:
    return tuple(
        (index, *_bounds(field), field.name)
        for index, field in enumerate(fields)
        if field.values is not None
    )


def _converter(field: Field) -> Callable[[int], Any] | None:
    """What turns a checked wire value into the attribute's value (None: the int itself)."""
    values = field.values
    if isinstance(values, type) and issubclass(values, enum.IntEnum):
        return {member.value: member for member in values}.__getitem__
    if values is bool:
        return (False, True).__getitem__
    return None


def _refuse(checks: tuple[Check, ...], values: tuple[Any, ...], name: str) -> NoReturn:
    """Raise the FrameError for the first value that fails its check."""
    for index, low, high, field in checks:
        if not low <= values[index] <= high:
            raise FrameError("value", f"{name} {field} {values[index]} not in {low}..{high}")
    raise AssertionError("no value failed its check")


def _builder(layout: Layout, fields: Sequence[Field]) -> Callable[[tuple[Any, ...]], Frame]:
    """The frame from the values of its fields (one each), converting the narrowed ones."""
    frame: Callable[..., Frame] = layout.frame
    converters = [(i, c) for i, field in enumerate(fields) if (c := _converter(field)) is not None]
    if not converters:
        return lambda values: frame(*values)

    def build(values: tuple[Any, ...]) -> Frame:
        attributes = list(values)
        for index, convert in converters:
            attributes[index] = convert(attributes[index])
        return frame(*attributes)

    return build


def _check_names(layout: Layout) -> None:
    """The codec builds frames positionally: the parts must be the dataclass fields, in order."""
    names = [part.name for part in layout.parts]
    expected = [field.name for field in dataclasses.fields(layout.frame)]
    if names != expected:
        raise TypeError(f"layout of {layout.frame.__name__} lists {names}, not {expected}")
    shapes = [type(part) for part in layout.parts]
    if (Record in shapes and shapes != [Record]) or Records in shapes[:-1]:
        raise TypeError(f"layout of {layout.frame.__name__}: Record must be alone, Records last")


def _integers(layout: Layout) -> tuple[Encoder, Decoder]:
    """Codec of a body of integers only."""
    kind = int(layout.kind)
    name = layout.kind.name
    fields = [part for part in layout.parts if isinstance(part, Field)]
    names = [field.name for field in fields]
    get = attrgetter(*names) if len(names) > 1 else (lambda f: (getattr(f, names[0]),))
    pack = _struct([Field("type", "u8"), *fields]).pack
    body = _struct(fields)
    unpack_from = body.unpack_from
    expected = body.size + _OVERHEAD
    checks = _checks(fields)
    build = _builder(layout, fields)

    def encode(frame: Any) -> bytes:
        return pack(kind, *get(frame))

    def decode(payload: bytes) -> Frame:
        if len(payload) != expected:
            raise FrameError(
                "length", f"{name} body is {len(payload) - _OVERHEAD} bytes, expected {body.size}"
            )
        values = unpack_from(payload, 1)
        for index, low, high, _ in checks:
            if not low <= values[index] <= high:
                _refuse(checks, values, name)
        return build(values)

    return encode, decode


def _record(layout: Layout) -> tuple[Encoder, Decoder]:
    """Codec of a body that is one whole interval record (the hot path: reports)."""
    kind = int(layout.kind)
    name = layout.kind.name
    frame: Callable[[IntervalRecord], Frame] = layout.frame
    pack = _struct([Field("type", "u8"), *RECORD_FIELDS]).pack
    body = _struct(RECORD_FIELDS)
    unpack_from = body.unpack_from
    expected = body.size + _OVERHEAD
    checks = _checks(RECORD_FIELDS)

    def encode(frame: Any) -> bytes:
        return pack(kind, *frame.record)  # an IntervalRecord is the tuple of its values

    def decode(payload: bytes) -> Frame:
        if len(payload) != expected:
            raise FrameError(
                "length", f"{name} body is {len(payload) - _OVERHEAD} bytes, expected {body.size}"
            )
        values = unpack_from(payload, 1)
        for index, low, high, _ in checks:
            if not low <= values[index] <= high:
                _refuse(checks, values, name)
        return frame(_make_record(values))

    return encode, decode


def _with_records(layout: Layout) -> tuple[Encoder, Decoder]:
    """Codec of integers followed by a u8 count and that many records of one meter."""
    kind = int(layout.kind)
    name = layout.kind.name
    tail = layout.parts[-1]
    assert isinstance(tail, Records)
    fields = [part for part in layout.parts if isinstance(part, Field)]
    meter = [field.name for field in fields].index(tail.meter)
    head = _struct([*fields, Field("n", "u8")])
    record = _struct(RECORD_FIELDS[1:])
    head_pack = _struct([Field("type", "u8"), *fields, Field("n", "u8")]).pack
    record_pack = record.pack
    get = attrgetter(*[field.name for field in fields])
    checks = _checks(fields)
    record_checks = _checks(RECORD_FIELDS[1:])
    build = _builder(layout, [*fields, Field(tail.name, "u8")])
    smallest = head.size + _OVERHEAD

    def encode(frame: Any) -> bytes:
        records = frame.records
        start = head_pack(kind, *get(frame), len(records))
        return start + b"".join([record_pack(*r[1:]) for r in records])

    def decode(payload: bytes) -> Frame:
        if len(payload) < smallest:
            raise FrameError(
                "length", f"{name} body is {len(payload) - _OVERHEAD} bytes, at least {head.size}"
            )
        values = head.unpack_from(payload, 1)
        n = values[-1]
        if len(payload) != smallest + n * record.size:
            raise FrameError("length", f"{name} with {n} records is {len(payload)} bytes")
        for index, low, high, _ in checks:
            if not low <= values[index] <= high:
                _refuse(checks, values, name)
        meter_id = values[meter]
        records = []
        for found in record.iter_unpack(payload[1 + head.size : -2]):
            for index, low, high, _ in record_checks:
                if not low <= found[index] <= high:
                    _refuse(record_checks, found, "RECORD")
            records.append(_make_record((meter_id, *found)))
        return build((*values[:-1], tuple(records)))

    return encode, decode


def _compile() -> tuple[dict[type, Encoder], dict[int, Decoder]]:
    encoders: dict[type, Encoder] = {}
    decoders: dict[int, Decoder] = {}
    for layout in LAYOUTS:
        _check_names(layout)
        shape = type(layout.parts[-1])
        make = _record if shape is Record else _with_records if shape is Records else _integers
        encoders[layout.frame], decoders[int(layout.kind)] = make(layout)
    return encoders, decoders


_ENCODERS, _DECODERS = _compile()


def encode_payload(frame: Frame) -> bytes:
    """Type byte, body and CRC of ``frame``: the bytes that get byte-stuffed."""
    encoder = _ENCODERS.get(type(frame))
    if encoder is None:
        raise TypeError(f"not a radio frame: {frame!r}")
    try:
        data = encoder(frame)
    except struct.error as exc:
        raise FrameError("value", f"{type(frame).__name__} field out of range: {exc}") from None
    return data + crc16(data).to_bytes(2, "big")


def decode_payload(payload: bytes) -> Frame:
    """The frame in ``payload`` (type, body, CRC; already unstuffed), or FrameError."""
    if len(payload) < _OVERHEAD:
        raise FrameError("short", f"frame of {len(payload)} bytes is shorter than {_OVERHEAD}")
    if not frame_ok(payload):
        raise FrameError("crc", "CRC mismatch")
    decoder = _DECODERS.get(payload[0])
    if decoder is None:
        raise FrameError("unknown_type", f"unknown frame type 0x{payload[0]:02x}")
    return decoder(payload)
