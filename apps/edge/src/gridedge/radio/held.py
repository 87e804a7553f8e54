"""Records held back while a gap is filled, packed in interval slots: about 23 bytes each.

Why not a dict of records: while the history of thousands of newly found
meters is fetched (first installation, or an edge that was off for hours),
tens of thousands of records wait at once.  As Python objects they cost about
300 bytes each, as dict entries of packed bytes about 120; here a meter's held
records are one bytearray of 22-byte slots, one per interval from the lowest
held one to the highest, plus one presence byte per slot.  Lookups are index
arithmetic, and the edge's memory stays within its budget.

The packed format lives here and nowhere else: :func:`pack` and :func:`unpack`
turn an :class:`IntervalRecord` into a slot and back (the meter id and the
interval end are implied by the container and the slot).

Tests: tests/radio/test_link.py (test_held_slots_*, test_held_format_*).
"""

from __future__ import annotations

import struct

from gridradio import INTERVAL_SECONDS, IntervalRecord

__all__ = ["SLOT_SIZE", "HeldRecords", "pack", "unpack"]

# energy_wh, max_demand_w, voltage_dv, current_ma, power_factor, flags.
_FORMAT = struct.Struct(">QIHIhH")
#: Bytes of one packed record (all fields but meter id and interval end).
SLOT_SIZE = _FORMAT.size
_I = INTERVAL_SECONDS
_pack = _FORMAT.pack
_unpack = _FORMAT.unpack
_make_record = IntervalRecord._make


def pack(record: IntervalRecord) -> bytes:
    """The slot of ``record``: every field but the meter id and the interval end."""
    return _pack(*record[2:])


def unpack(meter_id: int, end: int, packed: bytes) -> IntervalRecord:
    """The record of ``meter_id`` at ``end`` whose slot is ``packed``."""
    return _make_record((meter_id, end, *_unpack(packed)))


class HeldRecords:
    """A meter's held records: interval end -> packed slot (:func:`pack`), dict-like."""

    __slots__ = ("_buf", "_count", "_first", "_mask")

    def __init__(self) -> None:
        self._first = 0
        self._buf = bytearray()
        self._mask = bytearray()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _slot(self, end: int) -> int:
        k, rest = divmod(end - self._first, _I)
        return k if not rest and 0 <= k < len(self._mask) else -1

    def __contains__(self, end: object) -> bool:
        if not isinstance(end, int):
            return False
        k = self._slot(end)
        return k >= 0 and self._mask[k] == 1

    def __getitem__(self, end: int) -> bytes:
        k = self._slot(end)
        if k < 0 or not self._mask[k]:
            raise KeyError(end)
        return bytes(self._buf[k * SLOT_SIZE : (k + 1) * SLOT_SIZE])

    def __setitem__(self, end: int, packed: bytes) -> None:
        if len(packed) != SLOT_SIZE or end % _I:
            raise ValueError(f"a held record is {SLOT_SIZE} bytes at an interval end")
        mask = self._mask
        if not mask:
            self._first = end
            mask.append(0)
            self._buf.extend(bytes(SLOT_SIZE))
            k = 0
        else:
            k = (end - self._first) // _I
            if k < 0:
                mask[0:0] = bytes(-k)
                self._buf[0:0] = bytes(-k * SLOT_SIZE)
                self._first = end
                k = 0
            elif k >= len(mask):
                grow = k - len(mask) + 1
                mask.extend(bytes(grow))
                self._buf.extend(bytes(grow * SLOT_SIZE))
        if not mask[k]:
            mask[k] = 1
            self._count += 1
        self._buf[k * SLOT_SIZE : (k + 1) * SLOT_SIZE] = packed

    def __delitem__(self, end: int) -> None:
        k = self._slot(end)
        if k < 0 or not self._mask[k]:
            raise KeyError(end)
        self._mask[k] = 0
        self._count -= 1
        self._trim()

    def _trim(self) -> None:
        """Drop empty slots at both ends, so the lowest and highest slots are held records."""
        mask = self._mask
        if not self._count:
            self._first = 0
            self._mask = bytearray()
            self._buf = bytearray()
            return
        low = mask.find(1)
        if low > 0:
            del mask[:low]
            del self._buf[: low * SLOT_SIZE]
            self._first += low * _I
        high = mask.rfind(1)
        if high < len(mask) - 1:
            del mask[high + 1 :]
            del self._buf[(high + 1) * SLOT_SIZE :]

    def lowest(self) -> int:
        """Interval end of the oldest held record (the container must not be empty)."""
        return self._first

    def highest(self) -> int:
        """Interval end of the newest held record (the container must not be empty)."""
        return self._first + (len(self._mask) - 1) * _I

    def run_end(self, base: int) -> int:
        """The end of the run held without a hole right after ``base`` (``base`` if none)."""
        k = self._slot(base + _I)
        if k < 0 or not self._mask[k]:
            return base
        hole = self._mask.find(0, k)
        last = (len(self._mask) if hole < 0 else hole) - 1
        return self._first + last * _I

    def span_with(self, end: int) -> int:
        """Slots needed if a record at ``end`` were added."""
        if not self._count:
            return 1
        return (max(self.highest(), end) - min(self._first, end)) // _I + 1

    def discard_through(self, end: int) -> int:
        """Forget every record at or below ``end``; how many there were."""
        if not self._count or end < self._first:
            return 0
        k = min(len(self._mask), (end - self._first) // _I + 1)
        removed = self._mask.count(1, 0, k)
        del self._mask[:k]
        del self._buf[: k * SLOT_SIZE]
        self._first += k * _I
        self._count -= removed
        self._trim()
        return removed
