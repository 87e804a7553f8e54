"""SLIP byte stuffing of radio frames, and the incremental decoder: bytes in, frames out.

Why SLIP (RFC 1055) rather than COBS: both give a delimiter byte that never
occurs inside a frame, so a receiver resynchronises at the next delimiter after
noise, a cut cable or a reboot of either side.  SLIP's escapes are fixed
two-byte substitutions, so decoding is ``bytes.split`` plus two
``bytes.replace`` calls, all in C; COBS decoding needs a Python loop over its
code blocks, several times slower on the BeagleBone.  SLIP's worst case doubles
a frame, but our frames are short big-endian integers where 0xC0 and 0xDB are
rare (about 1 byte in 128), so the average overhead is under 2%.

Every frame is sent as ``END, stuffed(type, body, crc16), END``.  The leading
END flushes whatever noise preceded the frame; an empty frame between two ENDs
is ignored.

Decoder contract: :meth:`FrameDecoder.feed` accepts any bytes, in any pieces,
and returns the frames completed by them.  It never raises on input: a frame
that is badly escaped, too long, fails its CRC or does not decode is dropped
and counted in :attr:`FrameDecoder.errors` under the reason's name.  Memory is
bounded by ``MAX_STUFFED`` whatever arrives.

Tests: tests/radio_codec/test_framing.py (property tests: round trips, one byte at
a time, arbitrary garbage).
"""

from __future__ import annotations

from collections.abc import Iterable

from ._codec import decode_payload, encode_payload
from ._frames import Frame, FrameError

__all__ = [
    "END",
    "ESC",
    "ESC_END",
    "ESC_ESC",
    "MAX_STUFFED",
    "FrameDecoder",
    "encode",
    "encode_many",
    "stuff",
]

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD

_END = bytes((END,))
_ESC = bytes((ESC,))
_ESC_END_PAIR = bytes((ESC, ESC_END))
_ESC_ESC_PAIR = bytes((ESC, ESC_ESC))

#: Longest stuffed frame accepted (twice the longest frame, 2 + 21 + 16*22 + 2 bytes).
MAX_STUFFED = 1024


def stuff(payload: bytes) -> bytes:
    """``payload`` framed for the wire: END, escaped payload, END."""
    return _END + payload.replace(_ESC, _ESC_ESC_PAIR).replace(_END, _ESC_END_PAIR) + _END


def encode(frame: Frame) -> bytes:
    """The bytes that put ``frame`` on the serial line."""
    return stuff(encode_payload(frame))


def encode_many(frames: Iterable[Frame]) -> bytes:
    """Several frames back to back (one END between them is enough, but two are harmless)."""
    return b"".join(encode(frame) for frame in frames)


class FrameDecoder:
    """Incremental SLIP + CRC + frame decoder with drop counters.

    ``frames_ok`` counts frames decoded; ``errors`` maps a reason ("crc",
    "escape", "oversize", "short", "length", "value", "unknown_type") to the
    number of frames dropped for it; ``last_error`` describes the latest drop
    for logs.
    """

    __slots__ = ("_buffer", "_discarding", "bytes_received", "errors", "frames_ok", "last_error")

    def __init__(self) -> None:
        self._buffer = b""
        self._discarding = False
        self.bytes_received = 0
        self.frames_ok = 0
        self.errors: dict[str, int] = {}
        self.last_error = ""

    def _drop(self, kind: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = message

    @property
    def frames_dropped(self) -> int:
        return sum(self.errors.values())

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``; bad ones are counted and dropped."""
        self.bytes_received += len(data)
        if END not in data:
            # No frame ends here: only keep the data if it can still become a frame.
            if self._discarding:
                return []
            self._buffer += data
            if len(self._buffer) > MAX_STUFFED:
                self._drop("oversize", f"over {MAX_STUFFED} bytes without a frame delimiter")
                self._buffer = b""
                self._discarding = True
            return []
        parts = (self._buffer + data).split(_END)
        tail = parts.pop()
        if self._discarding:
            parts[0] = b""
            self._discarding = False
        if len(tail) > MAX_STUFFED:
            self._drop("oversize", f"over {MAX_STUFFED} bytes without a frame delimiter")
            tail = b""
            self._discarding = True
        self._buffer = tail
        frames: list[Frame] = []
        append = frames.append
        decode = decode_payload
        for part in parts:
            if not part:
                continue
            if _ESC in part:
                escapes = part.count(_ESC)
                ends = part.count(_ESC_END_PAIR)
                escs = part.count(_ESC_ESC_PAIR)
                if escapes != ends + escs:
                    self._drop("escape", "ESC not followed by ESC_END or ESC_ESC")
                    continue
                part = part.replace(_ESC_END_PAIR, _END).replace(_ESC_ESC_PAIR, _ESC)
            if len(part) > MAX_STUFFED:
                self._drop("oversize", f"frame of {len(part)} bytes")
                continue
            try:
                append(decode(part))
            except FrameError as exc:
                self._drop(exc.kind, str(exc))
        self.frames_ok += len(frames)
        return frames
