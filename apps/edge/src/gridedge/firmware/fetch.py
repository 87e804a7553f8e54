"""Which chunk to fetch next, and whether a chunk that arrived is good: one plan per kind of
offer.  Sans-IO apart from reading back what the store holds.

A full bundle (:class:`FullFetch`) is fetched tail first: the last chunk gives the size of
the CMS signature, the chunks holding the CMS come next (the agent has ``rauc info`` verify
it and reads the signed manifest), then those holding the verity hash tree, which is checked
against the signed root.  Only then are the data chunks fetched, in order, and each 4096-byte
block of each is checked against the tree as it arrives: a bad chunk is never stored.

A delta (:class:`DeltaFetch`) is a ``zstd --patch-from`` blob with no inner structure: its
chunks are fetched in order into a running sha256, checked against the offer's when the last
one is in (and the rebuilt bundle, its hash tree put back by gridedge.firmware.delta, against
the target's hash before install).

Tests: tests/edge/test_firmware_verity.py, tests/edge/test_firmware_agent.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gridedge.firmware.manifest import Manifest, ManifestError, cms_span, read_manifest
from gridedge.firmware.store import Download, DownloadStore
from gridedge.firmware.verity import VerityTree

__all__ = ["DeltaFetch", "FullFetch", "Step"]


@dataclass(frozen=True, slots=True)
class Step:
    """What the agent does next: fetch chunk ``index``; or ``check`` the signature of the
    stored tail (``rauc info``); or nothing left (``done``)."""

    index: int | None = None
    check: bool = False
    done: bool = False


class FullFetch:
    """The plan of a full verity bundle."""

    def __init__(self, store: DownloadStore) -> None:
        self.store = store
        self.cms: tuple[int, int] | None = None
        self.manifest: Manifest | None = None
        self.tree: VerityTree | None = None
        #: the stored tail was checked against the tree (the agent does it once, when built)
        self.tail_checked = False

    def _need_from(self, size: int) -> int:
        """The start of the tail needed before data chunks can be checked."""
        if self.cms is None:
            return size - 8
        if self.manifest is None:
            return self.cms[0]
        return self.cms[0] - self.manifest.verity_size

    def next(self, download: Download) -> Step:
        """The next step; ManifestError/VerityError (gridedge.firmware.verity) when the
        stored tail is not a verity bundle's."""
        while self.tree is None:
            need = self._need_from(download.size)
            for index in range(download.chunk_count - 1, -1, -1):
                start, length = download.span(index)
                if start + length <= need:
                    break
                if not download.has(index):
                    return Step(index=index)
            if self.cms is None:
                self.cms = cms_span(download.size, self.store.read(download.size - 8, 8))
            elif self.manifest is None:
                return Step(check=True)
            else:
                self._build_tree(download)
        for index in range(download.chunk_count):
            if not download.has(index):
                return Step(index=index)
        return Step(done=True)

    def signed(self) -> Manifest:
        """The tail's signature was verified: read the manifest inside it."""
        assert self.cms is not None
        start, end = self.cms
        self.manifest = read_manifest(self.store.read(start, end - start))
        if self.manifest.verity_size > start:
            raise ManifestError(f"verity-size {self.manifest.verity_size} does not fit")
        return self.manifest

    def _build_tree(self, download: Download) -> None:
        assert self.cms is not None and self.manifest is not None
        tree_start = self.cms[0] - self.manifest.verity_size
        self.tree = VerityTree(self.manifest.verity_salt, self.manifest.verity_hash,
                               tree_start, self.store.read(tree_start, self.manifest.verity_size))

    def tail_chunks(self, download: Download) -> list[int]:
        """The chunks holding the hash tree and the signature (fetched before the data)."""
        need = self._need_from(download.size)
        return [i for i in range(download.chunk_count) if sum(download.span(i)) > need]

    def bad_block(self, download: Download, index: int, data: bytes) -> int | None:
        """The offset of a block of chunk ``index`` that fails the tree (None: good, or not
        checkable yet: a tail chunk, checked when the tree is built)."""
        if self.tree is None:
            return None
        start, _ = download.span(index)
        return self.tree.bad_block(start, data)

    def stored_bad(self, download: Download) -> list[int]:
        """Tail chunks already stored whose data blocks fail the tree (fetch them again)."""
        assert self.tree is not None
        bad = []
        for index in self.tail_chunks(download):
            start, length = download.span(index)
            if download.has(index) and start < self.tree.data_size and \
                    self.tree.bad_block(start, self.store.read(start, length)) is not None:
                bad.append(index)
        return bad


class DeltaFetch:
    """The plan of a delta: in order, into a running sha256."""

    def __init__(self, store: DownloadStore, download: Download) -> None:
        self.store = store
        self.digest = hashlib.sha256()
        self.hashed = 0  # chunks in the digest (a prefix)
        while self.hashed < download.chunk_count and download.has(self.hashed):
            start, length = download.span(self.hashed)
            self.digest.update(store.read(start, length))  # resuming: re-hash the prefix
            self.hashed += 1

    def next(self, download: Download) -> Step:
        if self.hashed < download.chunk_count:
            return Step(index=self.hashed)
        return Step(done=True)

    def add(self, index: int, data: bytes) -> None:
        assert index == self.hashed
        self.digest.update(data)
        self.hashed += 1

    def matches(self, download: Download) -> bool:
        return self.digest.hexdigest() == download.sha256
