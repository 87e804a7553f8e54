"""Framing: length limits before allocation, minimal encodings, the extension mechanism."""

from __future__ import annotations

import pytest
from gridwire import (
    CloudSession,
    EdgeSession,
    Error,
    ErrorCode,
    Hello,
    Limits,
    Ping,
    ProtocolError,
    Welcome,
)
from gridwire._codec import FrameDecoder, encode_body, encode_message, frame
from gridwire._varint import uvarint

LIMITS = Limits()


def feed(data: bytes, limits: Limits = LIMITS) -> list[object]:
    return list(FrameDecoder(limits).feed(data))


def error_code(data: bytes, limits: Limits = LIMITS) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        feed(data, limits)
    assert info.value.remote
    return info.value.code


def test_too_large_length_is_refused_before_the_body_arrives() -> None:
    """A length prefix above max_frame_size fails at once: no body bytes are awaited or buffered."""
    limits = Limits(max_frame_size=100_000)
    decoder = FrameDecoder(limits)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(uvarint(100_001))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert FrameDecoder(limits).feed(uvarint(100_000)) == []  # at the limit: waits for the body


def test_length_prefix_of_more_than_three_bytes_is_refused() -> None:
    """The 4th continuation byte of a length prefix is refused without reading further."""
    assert error_code(b"\xff\xff\xff") is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00", ErrorCode.MALFORMED_FRAME),  # empty frame
        (b"\x81\x00\x08", ErrorCode.MALFORMED_FRAME),  # non-minimal length
        (b"\x01\x42", ErrorCode.UNKNOWN_MESSAGE),  # unknown critical type
        (b"\x02\x08\x80", ErrorCode.MALFORMED_FRAME),  # truncated nonce varint
        (b"\x03\x08\x80\x00", ErrorCode.MALFORMED_FRAME),  # non-minimal field varint
        (b"\x06\x08\xff\xff\xff\xff\x7f", ErrorCode.INVALID_FIELD),  # nonce above u32
        (b"\x04\x08\x00\x01\x00", ErrorCode.UNSUPPORTED_EXTENSION),  # critical extension tag 1
        (b"\x04\x08\x00\x02\x05", ErrorCode.MALFORMED_FRAME),  # extension overruns the frame
        (b"\x05\x0e\x01\x02\xc3\x28", ErrorCode.INVALID_FIELD),  # Error detail not UTF-8
        (b"\x02\x0b\x00", ErrorCode.MALFORMED_FRAME),  # ChunkRequest without its index
    ],
)
def test_malformed_frames(data: bytes, code: ErrorCode) -> None:
    """Each kind of malformed frame raises ProtocolError with its documented code."""
    assert error_code(data) is code


def test_unknown_optional_extension_fields_are_skipped() -> None:
    """Even extension tags are skipped, so a v1 peer reads a future sender's extended message."""
    body = (
        encode_body(Ping(nonce=5)) + uvarint(2) + uvarint(3) + b"abc" + uvarint(1000) + uvarint(0)
    )
    assert feed(frame(0x08, body)) == [Ping(nonce=5)]


def test_unknown_optional_message_is_skipped_and_counted() -> None:
    """A message type with bit 7 set that v1 does not know is skipped; the next one is delivered."""
    decoder = FrameDecoder(LIMITS)
    wire = frame(0x93, b"future stuff") + encode_message(Ping(nonce=1))
    assert decoder.feed(wire) == [Ping(nonce=1)]
    assert decoder.skipped == 1


def test_skipped_message_is_invisible_to_the_session() -> None:
    """An unknown optional message does not count as an event, even before the handshake."""
    cloud = CloudSession()
    assert cloud.receive_data(frame(0x9F, b"")) == []
    assert cloud.skipped == 1
    hello = Hello(min_version=1, max_version=1, firmware_version="x", boot_slot="A")
    assert cloud.receive_data(encode_message(hello)) == [hello]


def test_frame_at_max_size_is_accepted() -> None:
    """A frame exactly max_frame_size long is decoded (the limit is inclusive)."""
    limits = Limits(max_frame_size=70_000)
    body = encode_body(Ping(nonce=1))
    padding = 70_000 - 1 - len(body) - 1 - 3  # tag + 3-byte size prefix
    extended = body + uvarint(4) + uvarint(padding) + bytes(padding)
    data = frame(0x08, extended)
    assert len(extended) + 1 == 70_000
    assert feed(data, limits) == [Ping(nonce=1)]
    assert error_code(frame(0x08, extended + b"\x00"), limits) is ErrorCode.FRAME_TOO_LARGE


def test_session_decodes_hex_of_welcome() -> None:
    """A Welcome written by hand from the spec decodes in an edge session."""
    edge = EdgeSession()
    edge.send(Hello(min_version=1, max_version=1, firmware_version="1", boot_slot="A"))
    # len 9, type 2, version 1, server_time 1000 (e8 07), last_acked 5, heartbeat 60, window 4
    data = bytes.fromhex("09 02 01 e8 07 05 3c 04".replace(" ", ""))
    data = bytes([len(data) - 1]) + data[1:]
    assert edge.receive_data(data) == [
        Welcome(
            version=1, server_time=1000, last_acked_seq=5, heartbeat_interval=60, max_in_flight=4
        )
    ]


def test_point6_error_retry_hint_is_an_optional_extension() -> None:
    """Error.retry_after travels as extension tag 2 only when set; a v1 peer that knew no
    extension skips it (even tag); a known tag must fill its size and come once."""
    hinted = Error(code=ErrorCode.INTERNAL_ERROR, retry_after=300)
    body = encode_body(hinted)
    assert body.endswith(uvarint(2) + uvarint(2) + uvarint(300))
    assert encode_body(Error(code=ErrorCode.INTERNAL_ERROR)) == uvarint(15) + uvarint(0)
    assert feed(encode_message(hinted)) == [hinted]
    plain = uvarint(15) + uvarint(0)
    assert error_code(frame(0x0E, plain + b"\x02\x02\x1e\x00")) is ErrorCode.MALFORMED_FRAME
    twice = plain + b"\x02\x01\x1e" * 2
    assert error_code(frame(0x0E, twice)) is ErrorCode.MALFORMED_FRAME
    assert feed(frame(0x0E, plain + b"\x04\x01\x07")) == [Error(code=ErrorCode.INTERNAL_ERROR)]
    assert error_code(frame(0x0E, plain + b"\x03\x01\x07")) is ErrorCode.UNSUPPORTED_EXTENSION
