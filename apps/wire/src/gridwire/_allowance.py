"""The payload of ``Command(kind=SET_ALLOWANCE)``: a prepaid meter's remaining allowance.

Why a binary payload of its own and not JSON like ``SET_CONFIG``: allowances go to every
prepaid meter whenever its credit changes enough, over links metered by the byte; five
minimal uvarints take about 20 bytes where the same JSON object takes about 100.

Layout (docs/protocol.md, "SET_ALLOWANCE"), each field a minimal uvarint, in this order:

============== ===================================================================
generation     orders a meter's allowances: a unit applies only one newer than the
               one it holds (an older one delivered late changes nothing)
allowance_wh   Wh the meter may still use, counted from the anchor reading
anchor_end     interval_end (Unix s) of the meter's reading the cloud's balance is
               as of: consumption after it counts against ``allowance_wh``
anchor_wh      that reading's cumulative register (Wh)
valid_until    Unix s after which the allowance no longer holds (treated as used up)
============== ===================================================================

Bytes after the five fields are ignored (room for later fields); fewer fields are
refused with ``ProtocolError(INVALID_FIELD)``.

Tests: tests/wire/test_allowance.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import ErrorCode, ProtocolError
from ._varint import Reader, uvarint

__all__ = ["Allowance"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Allowance:
    """A prepaid meter's remaining allowance, as the cloud sends it to the meter's unit."""

    generation: int
    allowance_wh: int
    anchor_end: int
    anchor_wh: int
    valid_until: int

    def __post_init__(self) -> None:
        for name in ("generation", "allowance_wh", "anchor_end", "anchor_wh", "valid_until"):
            value = getattr(self, name)
            if not 0 <= value < 1 << 64:
                raise ProtocolError(ErrorCode.INVALID_FIELD,
                                    f"Allowance.{name} must be in [0, 2^64), not {value}")

    def encode(self) -> bytes:
        """The payload bytes (five minimal uvarints)."""
        return b"".join(uvarint(v) for v in (self.generation, self.allowance_wh,
                                              self.anchor_end, self.anchor_wh,
                                              self.valid_until))

    @classmethod
    def decode(cls, payload: bytes) -> Allowance:
        """Parse a payload; ``ProtocolError`` when it is truncated or not minimal."""
        reader = Reader(payload)
        try:
            values = [reader.uvarint() for _ in range(5)]
        except ProtocolError as exc:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"SET_ALLOWANCE payload: {exc}") from exc
        generation, wh, end, register, valid = values
        return cls(generation=generation, allowance_wh=wh, anchor_end=end, anchor_wh=register,
                   valid_until=valid)
