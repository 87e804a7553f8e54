"""SLIP framing, the CRC and the incremental decoder: property tests and resynchronisation."""

from __future__ import annotations

from gridradio import (
    CHECK_VALUE,
    END,
    ESC,
    MAX_STUFFED,
    FrameDecoder,
    IntervalRecord,
    IntervalReport,
    ModuleStatus,
    crc16,
    decode_payload,
    encode,
    encode_payload,
    frame_ok,
    stuff,
)
from hypothesis import given, settings
from hypothesis import strategies as st

REPORT = IntervalReport(IntervalRecord(100001, 1767572100, 1234567, 850, 2291, 3120, 960, 0))


def test_crc_check_value() -> None:
    """The CRC is CRC-16/CCITT-FALSE: its check value over "123456789" is 0x29B1."""
    assert crc16(b"123456789") == CHECK_VALUE == 0x29B1
    assert frame_ok(b"123456789" + CHECK_VALUE.to_bytes(2, "big"))
    assert not frame_ok(b"123456780" + CHECK_VALUE.to_bytes(2, "big"))


@given(st.binary(max_size=600))
def test_stuffing_round_trip(payload: bytes) -> None:
    """Stuffed bytes hold END only at both ends, and unstuff to the original payload."""
    wire = stuff(payload)
    assert wire[0] == END and wire[-1] == END and END not in wire[1:-1]
    inner = wire[1:-1]
    assert inner.count(bytes((ESC,))) == inner.count(b"\xdb\xdc") + inner.count(b"\xdb\xdd")
    assert inner.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb") == payload


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_frames_one_byte_at_a_time(times: list[int]) -> None:
    """Frames fed one byte at a time decode exactly like frames fed at once."""
    frames = [ModuleStatus(t, t // 7, 5000, 3, 0x0103) for t in times]
    wire = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got.extend(decoder.feed(wire[i : i + 1]))
    assert got == frames
    assert decoder.frames_dropped == 0


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_garbage_never_raises_and_resynchronises(noise: bytes, piece: int) -> None:
    """Any bytes, in any pieces, never raise; a frame after the noise is still decoded."""
    decoder = FrameDecoder()
    wire = noise + encode(REPORT)
    got = []
    for i in range(0, len(wire), piece):
        got.extend(decoder.feed(wire[i : i + piece]))
    assert got[-1:] == [REPORT]
    assert len(decoder._buffer) <= MAX_STUFFED


def test_bad_frames_are_counted_by_reason() -> None:
    """CRC errors, bad escapes, short and oversize frames are dropped under their own counter."""
    good = encode(REPORT)
    flipped = bytearray(good)
    flipped[5] ^= 0x10
    decoder = FrameDecoder()
    frames = decoder.feed(
        bytes(flipped) + b"\xc0\xdb\x01\xc0" + b"\xc0\x01\xc0" + b"\x55" * (MAX_STUFFED + 10) + good
    )
    assert frames == [REPORT]
    assert decoder.errors == {"crc": 1, "escape": 1, "short": 1, "oversize": 1}
    assert decoder.frames_ok == 1


def test_oversize_run_without_delimiter_is_bounded() -> None:
    """Megabytes without a delimiter keep the buffer bounded; the next frame decodes."""
    decoder = FrameDecoder()
    for _ in range(1000):
        assert decoder.feed(b"\x11" * 1000) == []
    assert len(decoder._buffer) <= MAX_STUFFED
    assert decoder.feed(encode(REPORT)) == [REPORT]
    assert decoder.errors["oversize"] >= 1


def test_payload_with_delimiters_survives() -> None:
    """A frame whose payload contains END and ESC bytes is escaped and comes back intact."""
    frame = ModuleStatus(0xC0DBC0DB, 0xDBDBC0C0, 0xC0DB, 0xDBC0, 0xC0C0)
    assert END in encode_payload(frame) and ESC in encode_payload(frame)
    assert FrameDecoder().feed(encode(frame)) == [frame]
    assert decode_payload(encode_payload(frame)) == frame
