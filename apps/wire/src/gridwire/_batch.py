"""Columnar, delta-coded, optionally deflated encoding of a batch of interval records.

Layout (docs/protocol.md, "Reading batch body", is the normative text):

    count            uvarint, 1..Limits.max_batch_records
    codec            u8: 0 = planes stored, 1 = planes deflated (zlib, RFC 1950),
                     2 = (version 2 only) planes deflated (raw, RFC 1951) with the
                     previous batch's planes of the connection as preset dictionary
    8 column headers in FIELDS order, each:
        mode         u8: 0 FOR, 1 DELTA, 2 METER_DELTA (not for meter_id)
        width        u8: 0..8 bytes per offset
        base         svarint
        start        svarint               (DELTA only: the first value)
        width2 base2 u8, svarint           (METER_DELTA only: first sightings)
    data_length      uvarint: bytes that follow (after deflate when codec = 1)
    data             the byte planes of every column, in column order

A column of n values becomes unsigned offsets:
    FOR          n offsets v[i] - base
    DELTA        n - 1 offsets v[i] - v[i-1] - base
    METER_DELTA  for each record whose meter has a reference (its latest earlier
                 record in this batch, else in the previous ReadingBatch of the
                 same connection): v - reference value - base; for the others
                 ("first sightings"): v - base2.  The first-sighting offsets
                 (width2) come first, then the others (width), each in record order.
Offsets of width w are stored as w "byte planes": all least significant bytes,
then all second bytes, and so on.  Why planes: the high bytes of similar numbers
are nearly constant, and grouping them gives deflate long runs; and both
directions are C loops (slicing with a step, ``array``), so no Python code runs
per value.  Why METER_DELTA against the previous batch: cumulative energy
registers of a thousand meters are random 4-byte numbers, but each one moves
by a few hundred Wh between two uploads; it saves about 2.5 bytes per record.

Why codec 2 (protocol version 2): a unit uploads each interval's readings in
one batch, in the order its meters report, which is the same every interval.
The previous batch's planes (sparse meter ids in that order, the same meters'
similar values) are the best dictionary deflate can have, and both ends hold
them already: about 1.5 bytes a reading fewer on a field-like day.

Codec contract: ``decode_batch`` returns RecordColumns or raises
ProtocolError (BAD_BATCH, BATCH_TOO_LARGE, MALFORMED_FRAME, INVALID_FIELD);
it computes the exact decoded size from the headers and never inflates more.

Tests: tests/wire/test_batch.py, tests/wire/test_fuzz.py, tests/wire/test_version2.py.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, repeat
from itertools import compress as select
from operator import add, is_not, ne, not_, sub

from ._errors import ErrorCode, ProtocolError
from ._records import FIELD_RANGES, FIELDS, RecordColumns
from ._varint import Reader, uvarint, zigzag

__all__ = ["decode_batch", "encode_batch", "records_per_frame"]

MODE_FOR = 0
MODE_DELTA = 1
MODE_METER_DELTA = 2

CODEC_STORED = 0
CODEC_DEFLATE = 1
CODEC_DEFLATE_PRIMED = 2  #: protocol version 2 only
#: deflate's window: only the last 32 KiB of a preset dictionary can be referred to
_WINDOW = 32 * 1024

#: deflate level: 6 is within a few per cent of 9 on batches and much faster.
DEFLATE_LEVEL = 6

#: array type code holding ``width`` bytes, by width (1, 2, 4 or 8 bytes).
_CONTAINER = {0: 1, 1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
_TYPECODE = {1: "B", 2: "H", 4: "I", 8: "Q"}
if [array(code).itemsize for code in _TYPECODE.values()] != list(_TYPECODE):
    raise ImportError("gridwire needs array item sizes B=1, H=2, I=4, Q=8 bytes")
_BIG_ENDIAN = sys.byteorder == "big"
_RANGES = tuple(FIELD_RANGES[name] for name in FIELDS)
_PENALTY = {MODE_FOR: 0.0, MODE_DELTA: 1 / 64, MODE_METER_DELTA: 1 / 16}


def _width(span: int) -> int:
    """Bytes needed for unsigned offsets 0..span."""
    return (span.bit_length() + 7) >> 3


#: Bytes one record takes in the data planes at most: the widest offset of every column
#: (planes are deflated only when that makes them smaller).
MAX_RECORD_BYTES = sum(_width(high - low) for low, high in _RANGES)
#: Bytes of a ReadingBatch frame other than its records' planes, at most: frame length,
#: type, first_seq, count, codec, eight column headers of up to 33 bytes, data_length.
MAX_BATCH_OVERHEAD = 3 + 1 + 10 + 3 + 1 + 8 * 33 + 4


def records_per_frame(max_frame_size: int) -> int:
    """How many records a ReadingBatch may hold so that it surely fits ``max_frame_size``."""
    return max(1, (max_frame_size - MAX_BATCH_OVERHEAD) // MAX_RECORD_BYTES)


def _planes(offsets: Iterable[int], count: int, width: int) -> bytes:
    """Byte planes (least significant first) of ``count`` offsets, each < 256**width."""
    if width == 0 or count == 0:
        return b""
    size = _CONTAINER[width]
    packed = array(_TYPECODE[size], offsets)
    if _BIG_ENDIAN:
        packed.byteswap()
    raw = packed.tobytes()
    if size == 1:
        return raw
    return b"".join([raw[k::size] for k in range(width)])


def _unplane(data: bytes | memoryview, pos: int, count: int, width: int) -> array[int]:
    """Offsets back from ``width`` planes of ``count`` bytes starting at ``pos``."""
    size = _CONTAINER[width]
    if width == 0:
        return array("B", bytes(count))
    if size == 1:
        return array("B", data[pos : pos + count])
    buf = bytearray(count * size)
    for k in range(width):
        buf[k::size] = data[pos + k * count : pos + (k + 1) * count]
    out = array(_TYPECODE[size])
    out.frombytes(buf)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


class _Column:
    """One candidate encoding of a column: its header bytes and its planes."""

    __slots__ = ("header", "planes")

    def __init__(self, header: bytes, planes: bytes) -> None:
        self.header = header
        self.planes = planes


def _for(values: Sequence[int]) -> _Column:
    base = min(values)
    top = max(values)
    width = _width(top - base)
    offsets = values if base == 0 else map(sub, values, repeat(base))
    return _Column(
        bytes((MODE_FOR, width)) + uvarint(zigzag(base)), _planes(offsets, len(values), width)
    )


def meter_planes(meter_ids: Sequence[int]) -> bytes:
    """The planes of a meter id column in FOR mode (a version 3 connection's first primer)."""
    return _for(meter_ids).planes if meter_ids else b""


def _delta(values: Sequence[int]) -> _Column | None:
    if len(values) < 2:
        return None
    deltas = list(map(sub, values[1:], values[:-1]))
    base = min(deltas)
    width = _width(max(deltas) - base)
    if width > 8:
        return None
    offsets = deltas if base == 0 else map(sub, deltas, repeat(base))
    return _Column(
        bytes((MODE_DELTA, width)) + uvarint(zigzag(base)) + uvarint(zigzag(values[0])),
        _planes(offsets, len(deltas), width),
    )


class _References:
    """For each record, where the latest earlier value of the same meter is (METER_DELTA).

    ``refs`` holds, for records that have a reference, its position in
    ``previous column + current column`` (previous batch first); ``mask`` says
    which records have one.  ``inner`` lists (position, referenced position)
    for references into the current batch, in record order: only those need
    a Python loop when decoding; everything else is C loops.
    """

    __slots__ = ("decode_refs", "inner", "mask", "previous", "refs")

    def __init__(self, meters: Sequence[int], previous: RecordColumns | None) -> None:
        prev_meters = previous.meter_id if previous is not None else ()
        size = len(prev_meters)
        last = dict(zip(prev_meters, range(size), strict=True))
        self.previous = previous
        refs: list[int | None] = list(map(last.get, meters))
        self.inner: list[tuple[int, int]] = []
        last_here = dict(zip(meters, range(len(meters)), strict=True))
        if len(last_here) != len(meters):
            # positions that are not their meter's last occurrence name the repeated meters
            not_last = map(ne, map(last_here.__getitem__, meters), range(len(meters)))
            repeated = {meters[position] for position in select(range(len(meters)), not_last)}
            seen: dict[int, int] = {}
            for position in select(range(len(meters)), map(repeated.__contains__, meters)):
                meter = meters[position]
                earlier = seen.get(meter)
                if earlier is not None:
                    refs[position] = size + earlier
                    self.inner.append((position, earlier))
                seen[meter] = position
        self.mask = list(map(is_not, refs, repeat(None)))
        self.refs: list[int] = list(select(refs, self.mask))  # type: ignore[arg-type]
        # for decoding: references into this batch point at previous[0] (or a 0) for now
        # and are fixed up in record order once the values they point at are known
        if self.inner:
            for position, _ in self.inner:
                refs[position] = 0
            self.decode_refs: list[int] = list(select(refs, self.mask))  # type: ignore[arg-type]
        else:
            self.decode_refs = self.refs

    @property
    def useful(self) -> bool:
        """True when at least one record has a reference."""
        return bool(self.refs)


def _meter_delta(values: Sequence[int], column: int, refs: _References) -> _Column | None:
    previous = refs.previous.as_tuple()[column] if refs.previous is not None else ()
    combined = tuple(previous) + tuple(values)
    repeats = list(map(sub, select(values, refs.mask), map(combined.__getitem__, refs.refs)))
    firsts = list(select(values, map(not_, refs.mask)))
    base = min(repeats)
    width = _width(max(repeats) - base)
    base2 = min(firsts) if firsts else 0
    width2 = _width(max(firsts) - base2) if firsts else 0
    if width > 8:
        return None
    return _Column(
        bytes((MODE_METER_DELTA, width))
        + uvarint(zigzag(base))
        + bytes((width2,))
        + uvarint(zigzag(base2)),
        _planes(map(sub, firsts, repeat(base2)), len(firsts), width2)
        + _planes(map(sub, repeats, repeat(base)), len(repeats), width),
    )


def _cost(column: _Column, count: int) -> int:
    """Estimated deflated size of a candidate, cheaply: bytes that differ from their plane's
    most common value (probed at its start, middle and zero), since deflate makes runs
    of a repeated byte nearly free.  Exact zlib trials cost more than the whole encoding.
    """
    planes = column.planes
    total = 0
    for start in range(0, len(planes), count):
        plane = planes[start : start + count]
        if not plane:
            continue
        total += len(plane) - max(
            plane.count(0), plane.count(plane[0]), plane.count(plane[len(plane) // 2])
        )
    return total


def encode_batch(
    columns: RecordColumns, previous: RecordColumns | None = None, compress: bool | None = None
) -> bytes:
    """The batch body (without first_seq) for validated columns.

    ``previous``: the previous batch of this session (METER_DELTA references), or
    None.  ``compress``: None = deflate when that makes the data smaller (the
    default, "compression where it pays"); True/False force it (tests, benchmarks).
    """
    return encode_batch_modes(columns, previous, compress)[0]


def encode_batch_modes(
    columns: RecordColumns,
    previous: RecordColumns | None = None,
    compress: bool | None = None,
    modes: Sequence[int] | None = None,
) -> tuple[bytes, tuple[int, ...]]:
    """encode_batch that also returns the mode chosen per column, and can take them
    (see encode_batch_primed)."""
    body, chosen, _ = encode_batch_primed(columns, previous, compress, modes)
    return body, chosen


def encode_batch_primed(
    columns: RecordColumns,
    previous: RecordColumns | None = None,
    compress: bool | None = None,
    modes: Sequence[int] | None = None,
    primer: Sequence[bytes] | None = None,
) -> tuple[bytes, tuple[int, ...], tuple[bytes, ...]]:
    """The body, the mode chosen per column, and the uncompressed planes of each column
    (the next batch's ``primer`` in version 2).

    ``primer``: None in version 1; in version 2 the previous batch's planes on this
    connection, column by column (() before the first batch): a non-empty primer
    deflates with codec 2, its columns joined as the preset dictionary.  With a
    primer, modes are chosen by their real deflated size against the same column of
    the previous batch, and each column ends a deflate block (so each gets its own
    Huffman codes; a version 2 decoder inflates the stream as before): together
    about 1 byte a reading fewer than the estimate and one block, for a few
    milliseconds per batch, which an upload a quarter of an hour affords.

    ``modes``: use these column modes (falling back to FOR where one cannot
    apply) instead of trying every mode.  Why: trying costs about twice as much
    as encoding (five times with a primer), and consecutive batches of a connection
    nearly always choose the same modes, so a session tries every mode only now and then.
    """
    cols = columns.as_tuple()
    count = len(cols[0])
    if count == 0:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "a batch holds at least one record")
    refs = _References(cols[0], previous) if modes is None or MODE_METER_DELTA in modes else None
    chosen = []
    for index, values in enumerate(cols):
        if modes is not None:
            chosen.append(_column_in_mode(modes[index], values, index, refs))
            continue
        best = _for(values)
        if best.planes:
            candidates = [best, _delta(values)]
            if index and refs is not None and refs.useful:
                candidates.append(_meter_delta(values, index, refs))
            if primer is not None:
                dictionary = primer[index] if len(primer) == len(cols) else b""
                best = min(
                    (c for c in candidates if c is not None),
                    key=lambda c: len(c.header) + _deflated_size(c.planes, dictionary),
                )
            else:
                # cheaper-to-decode modes win near-ties: METER_DELTA must save count/16 bytes
                best = min(
                    (c for c in candidates if c is not None),
                    key=lambda c: _cost(c, count) + _PENALTY[c.header[0]] * count,
                )
        chosen.append(best)
    planes = tuple(column.planes for column in chosen)
    data = b"".join(planes)
    codec = CODEC_STORED
    if compress or (compress is None and len(data) > 32):
        if primer and any(primer):
            deflater = zlib.compressobj(
                DEFLATE_LEVEL, zlib.DEFLATED, -15, zdict=b"".join(primer)[-_WINDOW:]
            )
            pieces = [deflater.compress(part) + deflater.flush(zlib.Z_BLOCK) for part in planes]
            deflated = b"".join(pieces) + deflater.flush()
            packed = CODEC_DEFLATE_PRIMED
        else:
            deflated = zlib.compress(data, DEFLATE_LEVEL)
            packed = CODEC_DEFLATE
        if compress or len(deflated) < len(data):
            data, codec = deflated, packed
    headers = [column.header for column in chosen]
    body = b"".join([uvarint(count), bytes((codec,)), *headers, uvarint(len(data)), data])
    return body, tuple(column.header[0] for column in chosen), planes


def _deflated_size(planes: bytes, dictionary: bytes) -> int:
    """Bytes ``planes`` deflate to with ``dictionary`` preset (mode trials in version 2)."""
    if not planes:
        return 0
    if dictionary:
        deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15, zdict=dictionary)
    else:
        deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    return len(deflater.compress(planes)) + len(deflater.flush())


def _column_in_mode(
    mode: int, values: Sequence[int], index: int, refs: _References | None
) -> _Column:
    """The column in ``mode`` if it applies to these values, else in FOR."""
    column = None
    if mode == MODE_DELTA:
        column = _delta(values)
    elif mode == MODE_METER_DELTA and index and refs is not None and refs.useful:
        column = _meter_delta(values, index, refs)
    return column if column is not None else _for(values)


def decode_batch(
    reader: Reader, max_records: int, previous: RecordColumns | None = None
) -> RecordColumns:
    """Read one batch body (after first_seq) from ``reader``; see the module docstring."""
    return decode_batch_primed(reader, max_records, previous)[0]


def decode_batch_primed(
    reader: Reader,
    max_records: int,
    previous: RecordColumns | None = None,
    primer: bytes | None = None,
) -> tuple[RecordColumns, bytes]:
    """decode_batch that also returns the uncompressed planes; ``primer`` as in
    encode_batch_primed (None: version 1, where codec 2 is unknown)."""
    count = reader.uvarint(32)
    if count == 0:
        raise ProtocolError(ErrorCode.BAD_BATCH, "empty batch")
    if count > max_records:
        raise ProtocolError(
            ErrorCode.BATCH_TOO_LARGE, f"batch of {count} records exceeds {max_records}"
        )
    codec = reader.u8()
    if codec not in (CODEC_STORED, CODEC_DEFLATE) and not (
        codec == CODEC_DEFLATE_PRIMED and primer is not None
    ):
        raise ProtocolError(ErrorCode.BAD_BATCH, f"unknown batch codec {codec}")
    headers = []
    upper = 0  # most column bytes these headers can describe: the inflate bound
    for index in range(len(FIELDS)):
        mode = reader.u8()
        width = reader.u8()
        if width > 8:
            raise ProtocolError(ErrorCode.BAD_BATCH, f"column width {width} above 8")
        base = reader.svarint(66)
        if mode == MODE_FOR:
            headers.append((mode, width, base, 0, 0))
            upper += width * count
        elif mode == MODE_DELTA:
            headers.append((mode, width, base, reader.svarint(66), 0))
            upper += width * (count - 1)
        elif mode == MODE_METER_DELTA and index != 0:
            width2 = reader.u8()
            if width2 > 8:
                raise ProtocolError(ErrorCode.BAD_BATCH, f"column width {width2} above 8")
            headers.append((mode, width, base, width2, reader.svarint(66)))
            upper += max(width, width2) * count
        else:
            raise ProtocolError(ErrorCode.BAD_BATCH, f"unknown column mode {mode}")
    stored = reader.raw(reader.uvarint(32))
    if codec != CODEC_STORED:
        inflater = (
            zlib.decompressobj()
            if codec == CODEC_DEFLATE
            else zlib.decompressobj(-15, zdict=primer[-_WINDOW:])
            if primer
            else zlib.decompressobj(-15)
        )
        try:
            data = inflater.decompress(stored, upper + 1)
        except zlib.error as exc:
            raise ProtocolError(ErrorCode.BAD_BATCH, f"deflate data invalid: {exc}") from None
        if not inflater.eof or inflater.unused_data or len(data) > upper:
            raise ProtocolError(ErrorCode.BAD_BATCH, "deflate stream does not end with the data")
    else:
        data = bytes(stored)
    return _columns(data, count, headers, previous), data


def _columns(
    data: bytes,
    count: int,
    headers: list[tuple[int, int, int, int, int]],
    previous: RecordColumns | None,
) -> RecordColumns:
    """Columns from the (inflated) planes; every size is checked before it is sliced."""
    pos = 0
    out: list[tuple[int, ...]] = []
    refs: _References | None = None
    for index, (mode, width, base, extra, base2) in enumerate(headers):
        if mode == MODE_FOR:
            need = width * count
            _need(data, pos, need)
            if width == 0:
                values = (base,) * count
            else:
                offsets = _unplane(data, pos, count, width)
                pos += need
                values = tuple(offsets) if base == 0 else tuple(map(base.__add__, offsets))
        elif mode == MODE_DELTA:
            need = width * (count - 1)
            _need(data, pos, need)
            offsets = _unplane(data, pos, count - 1, width)
            pos += need
            steps = offsets if base == 0 else map(base.__add__, offsets)
            values = tuple(accumulate(steps, initial=extra))
        else:
            if refs is None:
                refs = _References(out[0], previous)
            repeats = len(refs.refs)
            firsts = count - repeats
            need = extra * firsts + width * repeats
            _need(data, pos, need)
            first_values = map(base2.__add__, _unplane(data, pos, firsts, extra))
            pos += extra * firsts
            steps = map(base.__add__, _unplane(data, pos, repeats, width))
            pos += width * repeats
            values = _resolve(index, refs, first_values, steps, count)
        low, high = _RANGES[index]
        if mode == MODE_FOR and low <= base and base + (1 << (8 * width)) - 1 <= high:
            pass  # every value base + offset is in range: no need to scan
        elif min(values) < low or max(values) > high:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"batch column {FIELDS[index]} outside {low}..{high}"
            )
        out.append(values)
    if pos != len(data):
        raise ProtocolError(ErrorCode.BAD_BATCH, f"{len(data) - pos} column bytes left over")
    return RecordColumns._trusted(out)  # every column was range-checked above


def _resolve(
    column: int, refs: _References, firsts: Iterator[int], steps: Iterator[int], count: int
) -> tuple[int, ...]:
    """METER_DELTA values: reference value + step, or the first-sighting value, in order."""
    previous = refs.previous.as_tuple()[column] if refs.previous is not None else (0,)
    repeats = map(add, map(previous.__getitem__, refs.decode_refs), steps)
    if len(refs.refs) == count:
        values = list(repeats)
    else:
        sources = (firsts, repeats)
        values = list(map(next, map(sources.__getitem__, refs.mask)))
    if refs.inner:
        placeholder = previous[0]
        for position, earlier in refs.inner:
            values[position] += values[earlier] - placeholder
    return tuple(values)


def _need(data: bytes, pos: int, need: int) -> None:
    if pos + need > len(data):
        raise ProtocolError(ErrorCode.BAD_BATCH, "column data shorter than its headers say")
