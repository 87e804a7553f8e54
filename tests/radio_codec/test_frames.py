"""Every radio frame type: round trips, validation and fuzzing of the payload codec."""

from __future__ import annotations

import gridradio as F
import pytest
from gridradio import FrameDecoder, IntervalRecord, encode
from hypothesis import given
from hypothesis import strategies as st

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
i8 = st.integers(-128, 127)
ends = st.integers(0, (2**32 - 1) // 900 - F.MAX_POLL_COUNT).map(lambda k: k * 900)


def records(meter_id: int, first: int, count: int) -> st.SearchStrategy[tuple[IntervalRecord, ...]]:
    slots = st.sets(st.integers(0, count - 1)).map(sorted)

    def build(ks: list[int]) -> st.SearchStrategy[tuple[IntervalRecord, ...]]:
        return st.tuples(
            *[
                st.builds(
                    IntervalRecord,
                    st.just(meter_id),
                    st.just(first + k * 900),
                    u32,
                    u32,
                    u16,
                    u32,
                    st.integers(-1000, 1000),
                    u16,
                )
                for k in ks
            ]
        )

    return slots.flatmap(build)


@st.composite
def poll_responses(draw: st.DrawFn) -> F.PollResponse:
    meter, first = draw(u32), draw(ends)
    count = draw(st.integers(1, F.MAX_POLL_COUNT))
    status = draw(st.sampled_from(F.PollStatus))
    recs = draw(records(meter, first, count)) if status == F.PollStatus.OK else ()
    return F.PollResponse(draw(u16), meter, first, count, status, draw(u32), draw(u32), recs)


any_frame = st.one_of(
    st.builds(
        F.IntervalReport,
        st.builds(IntervalRecord, u32, u32, u32, u32, u16, u32, st.integers(-1000, 1000), u16),
    ),
    st.builds(F.PollRequest, u16, u32, ends, st.integers(1, F.MAX_POLL_COUNT)),
    poll_responses(),
    st.builds(F.RelayCommand, u16, u32, st.booleans()),
    st.builds(
        F.RelayConfirm,
        u16,
        u32,
        st.booleans(),
        st.sampled_from(F.RelayStatus),
        st.sampled_from(F.RelayState),
    ),
    st.builds(F.MeterJoin, u32, u32, u8, i8),
    st.builds(F.MeterLeave, u32, st.sampled_from(F.LeaveReason)),
    st.builds(F.MeshStatus, u32, u32, u8, i8),
    st.builds(F.ModuleStatus, u32, u32, u16, u16, u16),
    st.builds(F.ModuleReset, u32, st.sampled_from(F.ResetReason), u16),
)


@given(any_frame)
def test_every_frame_round_trips(frame: F.Frame) -> None:
    """Encoding then decoding gives back an equal frame, through the payload and the wire."""
    assert F.decode_payload(F.encode_payload(frame)) == frame
    assert FrameDecoder().feed(encode(frame)) == [frame]


@given(st.binary(max_size=500))
def test_decode_payload_raises_only_frame_error(data: bytes) -> None:
    """Arbitrary payloads decode or raise FrameError, nothing else."""
    try:
        F.decode_payload(data)
    except F.FrameError as exc:
        assert exc.kind in {"short", "crc", "unknown_type", "length", "value"}


@given(any_frame, st.integers(0, 10_000), st.integers(0, 7))
def test_any_single_bit_error_is_caught(frame: F.Frame, where: int, bit: int) -> None:
    """A frame with any one bit flipped never decodes to a frame."""
    payload = bytearray(F.encode_payload(frame))
    payload[where % len(payload)] ^= 1 << bit
    with pytest.raises(F.FrameError):
        F.decode_payload(bytes(payload))


@given(st.binary(min_size=1, max_size=400), st.sampled_from(list(F.FrameType)))
def test_valid_crc_but_wrong_body_is_rejected(body: bytes, kind: F.FrameType) -> None:
    """A body with a good CRC but a wrong length or value raises FrameError (never a crash)."""
    data = bytes((kind,)) + body
    try:
        F.decode_payload(data + F.crc16(data).to_bytes(2, "big"))
    except F.FrameError as exc:
        assert exc.kind in {"length", "value"}


@given(any_frame, st.lists(st.tuples(st.integers(0, 400), u8), min_size=1, max_size=4))
def test_mutated_body_with_good_crc_decodes_canonically_or_raises(
    frame: F.Frame, edits: list[tuple[int, int]]
) -> None:
    """Valid frames with bytes overwritten (CRC recomputed, so the layouts are exercised)
    decode to a frame that encodes back to the same bytes, or raise FrameError: nothing else."""
    data = bytearray(F.encode_payload(frame)[:-2])
    for where, value in edits:
        data[where % len(data)] = value
    payload = bytes(data) + F.crc16(data).to_bytes(2, "big")
    try:
        decoded = F.decode_payload(payload)
    except F.FrameError as exc:
        assert exc.kind in {"unknown_type", "length", "value"}
    else:
        assert F.encode_payload(decoded) == payload


@given(st.lists(st.one_of(any_frame, st.binary(max_size=40)), max_size=20), st.integers(1, 64))
def test_decoder_fed_frames_and_garbage_never_raises(
    pieces: list[F.Frame | bytes], size: int
) -> None:
    """Frames mixed with arbitrary bytes, in arbitrary reads: feed() never raises, and every
    frame comes out (each starts with END, so the garbage before it is dropped on its own)."""
    wire = b"".join(p if isinstance(p, bytes) else encode(p) for p in pieces)
    decoder = FrameDecoder()
    decoded: list[F.Frame] = []
    for i in range(0, len(wire), size):
        decoded += decoder.feed(wire[i : i + size])
    remaining = iter(decoded)
    for frame in (p for p in pieces if not isinstance(p, bytes)):
        assert frame in remaining  # in order; garbage may rarely decode too


def test_invalid_frames_cannot_be_built() -> None:
    """Counts, interval alignment, statuses and record ranges are checked on construction."""
    with pytest.raises(F.FrameError):
        F.PollRequest(1, 2, 900, 0)
    with pytest.raises(F.FrameError):
        F.PollRequest(1, 2, 901, 1)
    rec = IntervalRecord(7, 2700, 1, 1, 1, 1, 1, 0)
    with pytest.raises(F.FrameError):
        F.PollResponse(1, 7, 900, 2, F.PollStatus.OK, 0, 0, (rec,))  # outside the range
    with pytest.raises(F.FrameError):
        F.PollResponse(1, 7, 900, 4, F.PollStatus.BUSY, 0, 0, (rec,))  # failure with records
    with pytest.raises(F.FrameError):
        F.encode_payload(F.IntervalReport(IntervalRecord(7, 900, 2**40, 1, 1, 1, 1, 0)))
