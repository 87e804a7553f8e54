"""Fuzzing: for any bytes whatsoever, decoding returns messages or raises ProtocolError."""

from __future__ import annotations

import pytest
from gridwire import CloudSession, EdgeSession, Limits, Message, ProtocolError, ReadingBatch
from gridwire._codec import FrameDecoder, encode_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.wire_strategies import messages, reading_batches

SMALL = Limits(max_frame_size=70_000, max_batch_records=50)


def only_protocol_errors(data: bytes, limits: Limits = SMALL) -> list[Message]:
    """Feed data; anything but a ProtocolError fails the test by propagating."""
    try:
        return FrameDecoder(limits).feed(data)
    except ProtocolError as exc:
        assert exc.remote
        return []


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    """Arbitrary bytes never raise anything but ProtocolError."""
    only_protocol_errors(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, inserted, deleted or the tail cut off."""
    wire = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "length"]))
        pos = draw(st.integers(0, max(0, len(wire) - 1)))
        if action == "flip" and wire:
            wire[pos] ^= draw(st.integers(1, 255))
        elif action == "insert":
            wire[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and wire:
            del wire[pos]
        elif action == "truncate":
            del wire[pos:]
        elif action == "length" and wire:
            wire[0] = draw(st.integers(0, 255))
    return bytes(wire)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames(data: bytes) -> None:
    """Corrupted valid frames (the inputs that reach deepest) only raise ProtocolError."""
    only_protocol_errors(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated_frames(), st.binary(max_size=40)), max_size=4), st.booleans())
def test_sessions_accept_any_bytes(chunks: list[bytes], edge_side: bool) -> None:
    """A session fed any byte chunks returns messages or raises ProtocolError, then refuses more."""
    session = EdgeSession(limits=SMALL) if edge_side else CloudSession(limits=SMALL)
    for chunk in chunks:
        try:
            session.receive_data(chunk)
        except ProtocolError:
            with pytest.raises(ProtocolError):
                session.receive_data(b"\x02\x08\x00")
            return


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(reading_batches(), mutated_frames())
def test_mutations_after_a_reference_batch(first: ReadingBatch, data: bytes) -> None:
    """After a reference batch (METER_DELTA), corrupted frames only raise ProtocolError."""
    decoder = FrameDecoder(SMALL)
    assert decoder.feed(encode_message(first)) == [first]
    try:
        decoder.feed(data)
    except ProtocolError as exc:
        assert exc.remote
