"""Round-trip properties: every message survives encode -> decode, whole or byte by byte."""

from __future__ import annotations

import random

from gridwire import (
    CloudSession,
    EdgeSession,
    Hello,
    IntervalRecord,
    Limits,
    Message,
    MessageType,
    ReadingBatch,
    RecordColumns,
    Welcome,
)
from gridwire._batch import decode_batch, encode_batch, encode_batch_modes
from gridwire._codec import FrameDecoder, encode_message
from gridwire._messages import MESSAGE_CLASSES
from gridwire._varint import Reader
from hypothesis import given, settings
from hypothesis import strategies as st

from support.wire_strategies import messages, reading_batches, realistic_records

LIMITS = Limits()


def decode_all(data: bytes) -> list[Message]:
    decoder = FrameDecoder(LIMITS)
    out = decoder.feed(data)
    assert decoder.buffered == 0
    return out


def test_strategies_cover_every_message_type() -> None:
    """The round-trip strategy generates every v1 message type (none is left untested)."""
    seen: set[int] = set()

    @settings(max_examples=400, database=None)
    @given(messages)
    def collect(message: Message) -> None:
        seen.add(message.TYPE)

    collect()
    assert seen == set(MessageType) == set(MESSAGE_CLASSES)


@given(messages)
def test_roundtrip_every_message(message: Message) -> None:
    """decode(encode(m)) == m for every message, and re-encoding gives the same bytes."""
    data = encode_message(message)
    (decoded,) = decode_all(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode_message(decoded) == data


@settings(max_examples=30)
@given(messages)
def test_roundtrip_one_byte_at_a_time(message: Message) -> None:
    """Feeding a frame one byte per call yields the message exactly once, at the last byte."""
    data = encode_message(message)
    decoder = FrameDecoder(LIMITS)
    for byte in data[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.feed(data[-1:]) == [message]
    assert decoder.buffered == 0


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_roundtrip_stream_in_random_chunks(stream: list[Message], data: st.DataObject) -> None:
    """Concatenated frames split at arbitrary points decode to the same message sequence.

    Batches are encoded as a session would: each one may refer to the previous one.
    """
    frames = []
    previous = None
    for message in stream:
        frames.append(encode_message(message, previous=previous))
        if isinstance(message, ReadingBatch):
            previous = message.columns
    wire = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = FrameDecoder(LIMITS)
    out: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += decoder.feed(wire[start:end])
    assert out == stream


@given(reading_batches(), st.booleans())
def test_batch_roundtrip_stored_and_deflated(batch: ReadingBatch, compress: bool) -> None:
    """A batch decodes identically whether its planes were stored or deflated."""
    (decoded,) = decode_all(encode_message(batch, compress=compress))
    assert decoded == batch
    assert isinstance(decoded, ReadingBatch)
    assert decoded.records == batch.records
    assert list(decoded.columns.rows()) == [tuple(r) for r in batch.records]


@settings(max_examples=60)
@given(st.lists(realistic_records(max_meters=5), min_size=2, max_size=4), st.booleans())
def test_consecutive_batches_referring_to_the_previous_one(
    polls: list[list[IntervalRecord]], through_sessions: bool
) -> None:
    """Batches whose METER_DELTA columns refer to the previous batch decode exactly, in a stream."""
    batches = []
    first = 1
    for records in polls:
        batches.append(ReadingBatch(first_seq=first, records=records))
        first += len(records)
    if through_sessions:
        edge, cloud = EdgeSession(), CloudSession()
        cloud.receive_data(
            edge.send(Hello(min_version=1, max_version=1, firmware_version="t", boot_slot="A"))
        )
        edge.receive_data(
            cloud.send(Welcome(version=1, server_time=0, last_acked_seq=0, max_in_flight=10))
        )
        wire = b"".join(edge.send(batch) for batch in batches)
        assert cloud.receive_data(wire) == batches
    else:
        previous = None
        wire = b""
        for batch in batches:
            wire += encode_message(batch, previous=previous)
            previous = batch.columns
        assert decode_all(wire) == batches


def test_energy_refers_to_the_previous_batch() -> None:
    """In the second of two polls of the same meters, energy is coded against the first poll."""
    rng = random.Random(5)
    start = {m: rng.randrange(10**6, 4 * 10**7) for m in range(1, 201)}
    polls = [
        RecordColumns.from_records(
            [
                IntervalRecord(
                    m, 900 * k, start[m] + 250 * k + rng.randrange(60), 0, 2300, 0, 900, 0
                )
                for m in start
            ]
        )
        for k in (1, 2)
    ]
    alone = encode_batch(polls[1])
    chained = encode_batch(polls[1], previous=polls[0])
    assert len(chained) < len(alone) / 2
    assert decode_batch(Reader(chained), 1000, previous=polls[0]) == polls[1]


@given(
    st.lists(realistic_records(max_meters=5), min_size=2, max_size=2),
    st.lists(st.sampled_from([0, 1, 2]), min_size=8, max_size=8),
)
def test_any_forced_column_modes_round_trip(
    polls: list[list[IntervalRecord]], modes: list[int]
) -> None:
    """Whatever modes a sender forces (as sessions do between full mode searches), it decodes."""
    first, second = (RecordColumns.from_records(records) for records in polls)
    body, used = encode_batch_modes(second, previous=first, modes=modes)
    assert all(u in (m, 0) for u, m in zip(used, modes, strict=True))
    assert used[0] != 2
    assert decode_batch(Reader(body), 1000, previous=first) == second
