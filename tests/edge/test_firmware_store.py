"""The download store on /data: chunks written at their offset and marked done only after
they are durable, a damaged or mismatched state discarded rather than trusted, room taken at
once, the delta base promoted only once its slot is healthy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gridedge.firmware.store import Download, DownloadStore
from gridwire import FirmwareOffer


def offer(size: int = 100_000, offer_id: int = 7) -> FirmwareOffer:
    return FirmwareOffer(offer_id=offer_id, version="2.0", size=size,
                         sha256=hashlib.sha256(b"x").digest(), chunk_size=32768)


def test_chunks_survive_a_restart_and_only_done_ones_count(tmp_path: Path) -> None:
    store = DownloadStore(tmp_path)
    download = store.begin(offer())
    assert store.part.stat().st_size == 100_000
    assert store.part.stat().st_blocks * 512 >= 100_000, "preallocated, not sparse"
    download = store.write_chunk(download, 3, b"\x03" * 1696)
    download = store.write_chunk(download, 1, b"\x01" * 32768)
    again = DownloadStore(tmp_path).current()
    assert again is not None and again == download
    assert again.missing() == [0, 2] and again.received == 32768 + 1696
    assert store.read(32768 * 3, 1696) == b"\x03" * 1696
    assert again.same_offer(offer()) and not again.same_offer(offer(offer_id=8))


def test_damaged_state_is_discarded(tmp_path: Path) -> None:
    store = DownloadStore(tmp_path)
    store.begin(offer())
    store.meta.write_text('{"offer_id": 7, "vers')  # a bit flip on the flash
    assert store.current() is None
    assert not store.part.exists()
    store.begin(offer())
    os.truncate(store.part, 5)
    assert store.current() is None


def test_room_counts_the_download_being_replaced(tmp_path: Path) -> None:
    store = DownloadStore(tmp_path)
    assert (store.room_needed(offer(), 0) or 0) < 0
    huge = FirmwareOffer(offer_id=1, version="9", size=(1 << 40) - 1, sha256=bytes(32))
    assert (store.room_needed(huge, 0) or 0) > 0


def test_base_is_promoted_only_when_healthy(tmp_path: Path) -> None:
    store = DownloadStore(tmp_path)
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(b"v2")
    store.keep_installed(bundle, "2.0", "ab" * 32)
    assert store.base_sha256() is None
    store.promote_installed()
    assert store.base_sha256() == "ab" * 32 and store.base.read_bytes() == b"v2"
    bundle.write_bytes(b"v3")
    store.keep_installed(bundle, "3.0", "cd" * 32)
    store.drop_installed()
    assert store.base_sha256() == "ab" * 32 and not store.installed.exists()


def test_outcomes_are_bounded(tmp_path: Path) -> None:
    store = DownloadStore(tmp_path)
    for i in range(1, 30):
        store.remember(i, 9, f"ok {i}")
    assert store.outcome(1) is None and store.outcome(29) == (9, "ok 29")


def test_bitmap() -> None:
    d = Download(1, "v", 10 * 4096, "00", 4096)
    for i in (0, 9, 3):
        d = d.marked(i)
    assert [i for i in range(10) if d.has(i)] == [0, 3, 9]
    assert d.marked(3, on=False).missing() == [1, 2, 3, 4, 5, 6, 7, 8]
