"""Frames and message bodies: bytes <-> messages, with no state beyond a receive buffer.

Frame (docs/protocol.md, "Frames"):

    length   uvarint, 1..Limits.max_frame_size: bytes of type + body that follow
    type     u8: MessageType; bit 7 set = optional (skipped when unknown)
    body     the message's fields in WIRE order, then the extension area:
             zero or more (tag uvarint, size uvarint, size bytes) up to the frame end;
             an odd tag is critical (reject when unknown), an even tag optional (skip)

Codec contract (``FrameDecoder.feed``): returns the complete messages found so
far (possibly none: "need more data") or raises ProtocolError.  Nothing else
escapes, for any input whatsoever.  The declared length is checked against the
limit as soon as the length prefix is complete, before the body is buffered,
and the type as soon as its byte arrives; ``next_message`` lets the caller
refuse a frame from that header before its body is awaited or decoded.

Tests: tests/wire/test_codec.py, tests/wire/test_fuzz.py, tests/wire/test_corpus.py.
"""

from __future__ import annotations

from collections.abc import Callable

from ._batch import decode_batch_primed, encode_batch
from ._errors import ErrorCode, ProtocolError, Side
from ._limits import Limits
from ._messages import MESSAGE_CLASSES, Message, ReadingBatch
from ._records import RecordColumns
from ._varint import Reader, uvarint

__all__ = ["OPTIONAL_TYPE_BIT", "FrameCheck", "FrameDecoder", "decode_body", "encode_message"]

#: A message type with this bit set may be skipped by a peer that does not know it.
OPTIONAL_TYPE_BIT = 0x80
#: The length prefix has at most this many bytes (2**21 - 1 is the largest frame).
MAX_LENGTH_BYTES = 3

#: ``check(message_type, length)``: vets a frame from its header; raises ProtocolError to refuse.
FrameCheck = Callable[[int, int], None]


def encode_body(
    message: Message, compress: bool | None = None, previous: RecordColumns | None = None
) -> bytes:
    """The body bytes of ``message``: fields in WIRE order, then its EXTENSIONS that are set.

    ``previous``: the columns of the previous ReadingBatch on this connection
    (the reference for METER_DELTA columns), None for the first one.
    """
    if isinstance(message, ReadingBatch):
        return uvarint(message.first_seq) + encode_batch(message.columns, previous, compress)
    out = [_encode_field(kind, getattr(message, name)) for name, (kind, _bound) in message.WIRE]
    for tag, name, (kind, _bound) in message.EXTENSIONS:
        value = getattr(message, name)
        if value:  # the default (0, empty) is not sent
            raw = _encode_field(kind, value)
            out.append(uvarint(tag) + uvarint(len(raw)) + raw)
    return b"".join(out)


def _encode_field(kind: str, value: object) -> bytes:
    if kind == "uint":
        assert isinstance(value, int)
        return uvarint(value)
    if kind == "text":
        assert isinstance(value, str)
        raw = value.encode("utf-8")
        return uvarint(len(raw)) + raw
    assert isinstance(value, bytes)
    if kind == "blob":
        return uvarint(len(value)) + value
    return value  # fixed


def _decode_field(reader: Reader, kind: str, bound: int) -> object:
    if kind == "uint":
        return reader.uvarint(bound)
    if kind == "text":
        return reader.text(bound)
    if kind == "blob":
        return reader.blob(bound)
    return reader.raw(bound)


def frame(message_type: int, body: bytes) -> bytes:
    """One frame around a body."""
    return uvarint(len(body) + 1) + bytes((message_type,)) + body


def encode_message(
    message: Message, compress: bool | None = None, previous: RecordColumns | None = None
) -> bytes:
    """One complete frame for ``message`` (see encode_body for ``previous``)."""
    return frame(message.TYPE, encode_body(message, compress, previous))


def decode_body(
    message_type: int,
    body: bytes | memoryview,
    limits: Limits,
    previous: RecordColumns | None = None,
    primer: bytes | None = None,
    planes: list[bytes] | None = None,
) -> Message | None:
    """The message in one frame body, or None for an unknown optional type.

    ``primer``: version 2's batch dictionary (see gridwire._batch), None in version 1;
    a ReadingBatch's uncompressed planes are appended to ``planes`` when given."""
    cls = MESSAGE_CLASSES.get(message_type)
    if cls is None:
        if message_type & OPTIONAL_TYPE_BIT:
            return None
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type 0x{message_type:02x}")
    reader = Reader(body)
    if cls is ReadingBatch:
        first_seq = reader.uvarint(64)
        columns, raw = decode_batch_primed(reader, limits.max_batch_records, previous, primer)
        if planes is not None:
            planes.append(raw)
        kwargs: dict[str, object] = {"first_seq": first_seq, "columns": columns}
    else:
        kwargs = {name: _decode_field(reader, kind, bound) for name, (kind, bound) in cls.WIRE}
    kwargs.update(_read_extensions(reader, cls))
    try:
        return cls(**kwargs)
    except ProtocolError as exc:
        # the constructor blames its caller; here the caller is the peer's bytes
        raise ProtocolError(exc.code, str(exc), Side.REMOTE) from None


def _read_extensions(reader: Reader, cls: type[Message]) -> dict[str, object]:
    """The extension fields ``cls`` knows; unknown optional ones are skipped, unknown critical
    ones refused.  A known field must fill its ``size`` exactly and appear once."""
    known = {tag: (name, kind) for tag, name, kind in cls.EXTENSIONS}
    found: dict[str, object] = {}
    while reader.remaining():
        tag = reader.uvarint(32)
        size = reader.uvarint(32)
        raw = reader.raw(size)
        if tag in known:
            name, (kind, bound) = known[tag]
            field = Reader(raw)
            value = _decode_field(field, kind, bound)
            if field.remaining() or name in found:
                raise ProtocolError(
                    ErrorCode.MALFORMED_FRAME, f"{cls.__name__}: bad extension {tag} ({name})"
                )
            found[name] = value
        elif tag & 1:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_EXTENSION,
                f"{cls.__name__}: unknown critical extension {tag}",
            )
    return found


class FrameDecoder:
    """Turns a byte stream into messages; keeps only the incomplete tail of it.

    Two ways to use it: ``feed(data)`` decodes every complete frame at once;
    ``append(data)`` then ``next_message(check)`` one frame at a time, each
    vetted from its header by ``check`` before its body is awaited or decoded
    (what a session does, so that a frame the state forbids costs no decoding).
    """

    __slots__ = ("_buffer", "frames", "limits", "previous_batch", "primer", "skipped")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buffer = bytearray()
        #: columns of the last ReadingBatch decoded (METER_DELTA reference of the next one)
        self.previous_batch: RecordColumns | None = None
        #: version 2: the last batch's planes, the next one's deflate dictionary (b"" before
        #: the first); None in version 1 (the session sets it once the version is known)
        self.primer: bytes | None = None
        #: unknown optional messages skipped so far (for logs and metrics)
        self.skipped = 0
        #: complete frames taken from the stream so far, skipped ones included
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more data."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Messages completed by ``data`` (see the codec contract above)."""
        self.append(data)
        messages: list[Message] = []
        while (message := self.next_message()) is not None:
            messages.append(message)
        return messages

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``; nothing is decoded until ``next_message``."""
        self._buffer += data

    def next_message(self, check: FrameCheck | None = None) -> Message | None:
        """The next message buffered, or None until a complete frame is (skipping optional ones).

        ``check(message_type, length)`` is called with each frame's header as
        soon as it is buffered, before the body is awaited or decoded, and
        raises ProtocolError to refuse the frame.  It may be called more than
        once for a frame whose body arrives in pieces, so it must not change
        anything.
        """
        buffer = self._buffer
        while True:
            header = self._header()
            if header is None:
                return None
            message_type, length, start = header
            if check is not None:
                check(message_type, length)
            end = start + length - 1
            if len(buffer) < end:
                return None
            # a copy of the body (slicing a bytearray copies): no buffer export can outlive
            # this call and block trimming the buffer
            body = bytes(buffer[start:end])
            del buffer[:end]
            self.frames += 1
            planes: list[bytes] = []
            message = decode_body(message_type, body, self.limits, self.previous_batch,
                                  self.primer, planes)
            if message is None:
                self.skipped += 1
                continue
            if isinstance(message, ReadingBatch):
                self.previous_batch = message.columns
                if self.primer is not None:
                    self.primer = planes[0]
            return message

    def _header(self) -> tuple[int, int, int] | None:
        """(type, length, offset of the body) of the frame at the buffer's start, once buffered.

        The length prefix is checked as soon as it is complete, and the type
        as soon as it arrives: neither waits for the body.
        """
        buffer = self._buffer
        end = len(buffer)
        length = 0
        shift = 0
        cursor = 0
        while True:
            if cursor >= end:
                return None
            byte = buffer[cursor]
            cursor += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise ProtocolError(ErrorCode.MALFORMED_FRAME, "non-minimal frame length")
                break
            shift += 7
            if cursor >= MAX_LENGTH_BYTES:
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE, "frame length prefix longer than 3 bytes"
                )
        if length == 0:
            raise ProtocolError(ErrorCode.MALFORMED_FRAME, "empty frame")
        max_frame = self.limits.max_frame_size
        if length > max_frame:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes exceeds {max_frame}"
            )
        if cursor >= end:
            return None
        message_type = buffer[cursor]
        if message_type not in MESSAGE_CLASSES and not message_type & OPTIONAL_TYPE_BIT:
            raise ProtocolError(
                ErrorCode.UNKNOWN_MESSAGE, f"unknown message type 0x{message_type:02x}"
            )
        return message_type, length, cursor + 1
