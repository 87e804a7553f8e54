"""A peer that floods compressed reading batches, and a count of what the receiver inflated.

Point 10 of issue 10: a peer that has not been admitted must cost no decoding.  Wall time
is a poor and flaky measure of that; the work itself is countable: gridwire inflates every
deflated batch it decodes, so :func:`count_inflation` wraps ``zlib.decompressobj`` for the
test (pytest's ``monkeypatch``) and counts the calls and the bytes they produced.

Tests: tests/cloud/test_cloud_connection.py, tests/system/test_certificates.py.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from gridwire import IntervalRecord, ReadingBatch
from gridwire._codec import encode_message  # forcing compression is not public API


@dataclass
class Inflation:
    """What zlib inflated in this process: the cost of decoding compressed batches."""

    calls: int = 0
    bytes: int = 0


def count_inflation(monkeypatch: pytest.MonkeyPatch) -> Inflation:
    """Count every zlib inflation in this process from now until the test ends."""
    counter = Inflation()
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args: Any) -> None:
            self._inflater = real(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inflater.decompress(data, max_length)
            counter.calls += 1
            counter.bytes += len(out)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inflater, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    return counter


def noisy_records(first_meter: int, count: int) -> list[IntervalRecord]:
    """Records whose columns do not collapse to constants: their batch has planes to inflate."""
    return [
        IntervalRecord(
            first_meter + i, 1_795_000_000, (i * 2_654_435_761) % 2**32, i % 977, 2300, 1500, 950, 0
        )
        for i in range(count)
    ]


def flood(count: int, per_batch: int = 400) -> bytes:
    """``count`` ReadingBatch frames from seq 1, deflated (what costs a receiver most to decode)."""
    return b"".join(
        encode_message(
            ReadingBatch(first_seq=s, records=noisy_records(s, per_batch)), compress=True
        )
        for s in range(1, count * per_batch, per_batch)
    )
