"""Batch encoding: column modes chosen as documented, bounded inflation, range checks."""

from __future__ import annotations

import random
import tracemalloc
import zlib

import pytest
from gridwire import ErrorCode, IntervalRecord, ProtocolError, RecordColumns
from gridwire._batch import (
    CODEC_DEFLATE,
    CODEC_STORED,
    MODE_DELTA,
    MODE_FOR,
    MODE_METER_DELTA,
    decode_batch,
    encode_batch,
)
from gridwire._records import FIELDS
from gridwire._varint import Reader, uvarint, zigzag


def day_slice(meters: int, intervals: int) -> RecordColumns:
    """``meters`` meters with sequential ids read at ``intervals`` consecutive 15-minute ends."""
    rng = random.Random(meters * 1000 + intervals)
    energy = [rng.randrange(10**6, 4 * 10**7) for _ in range(meters)]
    records = []
    for k in range(intervals):
        for m in range(meters):
            records.append(
                IntervalRecord(
                    meter_id=5000 + m,
                    interval_end=1_764_000_000 + 900 * k,
                    energy_wh=energy[m] + k * 120 + rng.randrange(100),
                    max_demand_w=300 + (m * 37 + k * 11) % 2000,
                    voltage_dv=2280 + (m * 13 + k) % 60,
                    current_ma=1500 + (m * 101 + k * 7) % 8000,
                    power_factor=880 + (m + k) % 100,
                    flags=8 if (m + k) % 50 == 0 else 0,
                )
            )
    return RecordColumns.from_records(records)


def headers(body: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(count, codec, [(mode, width) per column]) parsed as docs/protocol.md describes."""
    reader = Reader(body)
    count = reader.uvarint()
    codec = reader.u8()
    modes = []
    for _ in FIELDS:
        mode, width = reader.u8(), reader.u8()
        reader.svarint(66)
        if mode == MODE_DELTA:
            reader.svarint(66)
        elif mode == MODE_METER_DELTA:
            reader.u8()
            reader.svarint(66)
        modes.append((mode, width))
    return count, codec, modes


def test_one_interval_of_many_meters() -> None:
    """Sequential meter ids are delta coded to width 0 and a shared interval end costs nothing."""
    count, codec, modes = headers(encode_batch(day_slice(200, 1)))
    assert count == 200 and codec == CODEC_DEFLATE
    columns = dict(zip(FIELDS, modes, strict=True))
    assert columns["meter_id"] == (MODE_DELTA, 0)
    assert columns["interval_end"] == (MODE_FOR, 0)


def test_backlog_uses_per_meter_energy_deltas() -> None:
    """With several intervals per meter, energy is coded against each meter's previous value."""
    columns = day_slice(50, 8)
    body = encode_batch(columns)
    modes = dict(zip(FIELDS, headers(body)[2], strict=True))
    assert modes["energy_wh"][0] == MODE_METER_DELTA
    assert decode_batch(Reader(body), 10_000) == columns


def test_compression_only_where_it_pays() -> None:
    """A tiny batch is stored (deflate would grow it); forcing either codec still round-trips."""
    one = day_slice(1, 1)
    assert headers(encode_batch(one))[1] == CODEC_STORED
    for compress in (True, False):
        assert decode_batch(Reader(encode_batch(one, compress=compress)), 10) == one


def build_body(count: int, codec: int, columns: list[bytes], data: bytes) -> bytes:
    return uvarint(count) + bytes([codec]) + b"".join(columns) + uvarint(len(data)) + data


def for_header(width: int, base: int = 0) -> bytes:
    return bytes([MODE_FOR, width]) + uvarint(zigzag(base))


def batch_error(body: bytes, max_records: int = 8192) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_batch(Reader(body), max_records)
    return info.value.code


def test_count_above_limit_is_refused_from_the_header() -> None:
    """A batch claiming more records than allowed fails before any column is read."""
    assert batch_error(uvarint(9000), max_records=8192) is ErrorCode.BATCH_TOO_LARGE


def test_deflate_bomb_is_not_inflated() -> None:
    """Deflated data larger than the headers allow is refused after inflating at most that much."""
    bomb = zlib.compress(bytes(50_000_000), 9)
    body = build_body(10, CODEC_DEFLATE, [for_header(1)] * 8, bomb)
    tracemalloc.start()
    try:
        code = batch_error(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code is ErrorCode.BAD_BATCH
    assert peak < 1_000_000


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (build_body(0, CODEC_STORED, [], b""), ErrorCode.BAD_BATCH),  # empty batch
        (build_body(1, 7, [for_header(0)] * 8, b""), ErrorCode.BAD_BATCH),  # unknown codec
        (build_body(1, 0, [bytes([9, 0, 0])] + [for_header(0)] * 7, b""), ErrorCode.BAD_BATCH),
        (build_body(1, 0, [for_header(9)] + [for_header(0)] * 7, b""), ErrorCode.BAD_BATCH),
        (build_body(2, 0, [for_header(1)] * 8, bytes(15)), ErrorCode.BAD_BATCH),  # short data
        (build_body(2, 0, [for_header(1)] * 8, bytes(17)), ErrorCode.BAD_BATCH),  # extra data
        (build_body(1, 1, [for_header(0)] * 8, b"not zlib"), ErrorCode.BAD_BATCH),
        (  # METER_DELTA on the meter column itself
            build_body(1, 0, [bytes([MODE_METER_DELTA, 0, 0, 0, 0])] + [for_header(0)] * 7, b""),
            ErrorCode.BAD_BATCH,
        ),
        (  # voltage (column 4) base 70000 is above u16
            build_body(
                1, 0, [for_header(0)] * 4 + [for_header(0, 70_000)] + [for_header(0)] * 3, b""
            ),
            ErrorCode.INVALID_FIELD,
        ),
        (  # power factor (column 6) at -1001
            build_body(1, 0, [for_header(0)] * 6 + [for_header(0, -1001)] + [for_header(0)], b""),
            ErrorCode.INVALID_FIELD,
        ),
    ],
)
def test_inconsistent_batches(body: bytes, code: ErrorCode) -> None:
    """Every inconsistency between batch headers and data is a ProtocolError with its code."""
    assert batch_error(body) is code


def test_extreme_values_round_trip() -> None:
    """Field extremes (u64 energy, -1000 power factor) survive every column mode."""
    records = [
        IntervalRecord(0, 0, 0, 0, 0, 0, -1000, 0),
        IntervalRecord(
            2**32 - 1, 2**32 - 1, 2**64 - 1, 2**32 - 1, 2**16 - 1, 2**32 - 1, 1000, 2**16 - 1
        ),
        IntervalRecord(0, 5, 2**64 - 1, 1, 1, 1, 0, 1),
        IntervalRecord(0, 0, 0, 0, 0, 0, 1000, 0),
    ]
    columns = RecordColumns.from_records(records)
    for compress in (None, True, False):
        assert decode_batch(
            Reader(encode_batch(columns, compress=compress)), 10
        ).records() == tuple(records)
