"""Varints (unsigned LEB128), zigzag, and a bounds-checked reader over one frame body.

Codec contract: every ``Reader`` method returns a value or raises
``ProtocolError(MALFORMED_FRAME or INVALID_FIELD)``; it never reads past the
end of its buffer and never allocates more than the bytes it was given.
Varints must be minimal (no trailing 0x80 0x00 padding) so that every value has
exactly one encoding: a second implementation then produces identical bytes.

Tests: tests/wire/test_codec.py and tests/wire/test_corpus.py (truncated and non-minimal
varints), tests/wire/test_fuzz.py; indirectly every codec test.
"""

from __future__ import annotations

from ._errors import ErrorCode, ProtocolError

__all__ = ["Reader", "unzigzag", "uvarint", "zigzag"]

_SMALL = [bytes([i]) for i in range(128)]


def uvarint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low group first, high bit = more follows."""
    if value < 128:
        if value < 0:
            raise ValueError("uvarint of a negative number")
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag(value: int) -> int:
    """Map signed to unsigned so small magnitudes stay small: 0,-1,1,-2 -> 0,1,2,3."""
    return (value << 1) if value >= 0 else ((-value) << 1) - 1


def unzigzag(value: int) -> int:
    """Inverse of zigzag."""
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


class Reader:
    """A cursor over one complete frame body; all reads are bounds checked."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        """Bytes not read yet."""
        return self.end - self.pos

    def uvarint(self, max_bits: int = 64) -> int:
        """Read one minimal unsigned varint of at most ``max_bits`` bits."""
        data, pos, end = self.data, self.pos, self.end
        result = 0
        shift = 0
        limit = 7 * ((max_bits + 6) // 7)  # a varint of max_bits bits has this many bits at most
        while True:
            if pos >= end:
                raise ProtocolError(ErrorCode.MALFORMED_FRAME, "truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise ProtocolError(ErrorCode.MALFORMED_FRAME, "non-minimal varint")
                break
            shift += 7
            if shift >= limit:
                raise ProtocolError(ErrorCode.MALFORMED_FRAME, "varint too long")
        if result >> max_bits:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"varint value {result} exceeds {max_bits} bits"
            )
        self.pos = pos
        return result

    def svarint(self, max_bits: int = 64) -> int:
        """Read a zigzag-coded signed varint whose magnitude fits ``max_bits`` bits."""
        return unzigzag(self.uvarint(max_bits + 1))

    def u8(self) -> int:
        """Read one byte."""
        if self.pos >= self.end:
            raise ProtocolError(ErrorCode.MALFORMED_FRAME, "truncated byte")
        self.pos += 1
        return self.data[self.pos - 1]

    def raw(self, size: int) -> bytes:
        """Read exactly ``size`` bytes (checked against what is left, not allocated first)."""
        if size > self.end - self.pos:
            raise ProtocolError(
                ErrorCode.MALFORMED_FRAME, f"field of {size} bytes overruns the frame"
            )
        start = self.pos
        self.pos = start + size
        return bytes(self.data[start : self.pos])

    def blob(self, limit: int) -> bytes:
        """Read a length-prefixed byte string of at most ``limit`` bytes."""
        size = self.uvarint(32)
        if size > limit:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"{size} bytes exceed the limit {limit}")
        return self.raw(size)

    def text(self, limit: int) -> str:
        """Read a length-prefixed UTF-8 string of at most ``limit`` bytes."""
        raw = self.blob(limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"invalid UTF-8: {exc.reason}") from None
