"""The dm-verity hash tree of a RAUC verity bundle: checked against the signed root, then
used to check every 4096-byte block of the bundle as its chunk arrives.

Why on the unit, chunk by chunk: a bad chunk (a flipped bit on the link, a tampered proxy)
is found when it arrives and fetched again, instead of after hours of downloading, when
``rauc install`` would refuse the whole bundle.  RAUC signs the root hash and the salt in the
manifest (``[bundle] verity-hash``, ``verity-salt``, ``verity-size``), so once the signature
is verified the tree is as trustworthy as the signature.

The layout, as RAUC writes it (checked against bundles made by Debian's ``rauc bundle`` in
the tests): ``data | hash tree | CMS | size``; the data (the SquashFS) is a whole number of
4096-byte blocks; ``verity-size`` is the size of the tree; the tree has no superblock, its
levels are stored top level first, each level padded with zeros to whole blocks; an entry
is ``sha256(salt + block)``, 128 to a block; the root hash is that of the top level's one
block.

:class:`TreeBuilder` makes that tree from the data, byte for byte as ``rauc bundle`` writes
it: a delta carries the bundle without its tree (docs/updates.md, "Deltas": the tree changes
from the first changed block on and does not compress), and the unit puts it back.  It is
fed the data piece by piece, so a bundle's SquashFS is never held in memory: only the
hashes are, 32 bytes per 4096 (about 400 KiB for a 52 MB SquashFS).

Tests: tests/edge/test_firmware_verity.py.
"""

from __future__ import annotations

import hashlib
import itertools

__all__ = ["BLOCK", "TreeBuilder", "VerityError", "VerityTree", "tree_size"]

BLOCK = 4096
_DIGEST = 32
_PER_BLOCK = BLOCK // _DIGEST


class VerityError(ValueError):
    """The tree does not match the signed root hash, or a block does not match the tree."""


def _level_blocks(data_blocks: int) -> list[int]:
    """Blocks per level, bottom (hashes of the data) first."""
    levels = []
    n = data_blocks
    while True:
        n = -(-n // _PER_BLOCK)
        levels.append(n)
        if n == 1:
            return levels


def tree_size(data_size: int) -> int:
    """The size of the tree of ``data_size`` bytes of data (a multiple of BLOCK)."""
    return sum(_level_blocks(data_size // BLOCK)) * BLOCK


class VerityTree:
    """A hash tree checked against its root; :meth:`bad_block` checks data against it."""

    def __init__(self, salt: bytes, root: bytes, data_size: int, tree: bytes) -> None:
        if data_size <= 0 or data_size % BLOCK:
            raise VerityError(f"data size {data_size} is not a positive multiple of {BLOCK}")
        if len(tree) != tree_size(data_size):
            raise VerityError(f"hash tree is {len(tree)} bytes; {tree_size(data_size)} expected "
                              f"for {data_size} bytes of data")
        self.salt = salt
        self.data_size = data_size
        # Split the stored tree (top level first) into levels, bottom first.
        sizes = _level_blocks(data_size // BLOCK)
        levels: list[bytes] = []
        end = len(tree)
        for blocks in sizes:
            levels.append(tree[end - blocks * BLOCK:end])
            end -= blocks * BLOCK
        if self._hash(levels[-1]) != root:
            raise VerityError("hash tree does not match the signed root hash")
        for lower, upper in itertools.pairwise(levels):
            hashes = b"".join(self._hash(lower[i:i + BLOCK]) for i in range(0, len(lower), BLOCK))
            if upper[:len(hashes)] != hashes:
                raise VerityError("hash tree is inconsistent between its levels")
        self._leaves = levels[0]

    def _hash(self, block: bytes) -> bytes:
        return hashlib.sha256(self.salt + block).digest()

    def bad_block(self, offset: int, data: bytes) -> int | None:
        """The offset of the first block of ``data`` (at bundle ``offset``, both block-aligned)
        that does not match the tree, or None when all do.  Bytes at or beyond the end of the
        data (the tree itself, the signature) are not checked here."""
        if offset % BLOCK:
            raise ValueError(f"offset {offset} is not block-aligned")
        end = min(len(data), self.data_size - offset)
        for start in range(0, max(0, end), BLOCK):
            block = data[start:start + BLOCK]
            if len(block) < BLOCK:
                return offset + start  # a partial block inside the data: never valid
            index = (offset + start) // BLOCK
            if self._hash(block) != self._leaves[index * _DIGEST:(index + 1) * _DIGEST]:
                return offset + start
        return None


class TreeBuilder:
    """The hash tree of data fed to :meth:`update` in pieces of any size; :meth:`finish`
    returns it as RAUC stores it (top level first, levels padded to whole blocks)."""

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        self.data_size = 0
        self._pending = b""
        self._leaves: list[bytes] = []

    def _hash(self, block: bytes) -> bytes:
        return hashlib.sha256(self.salt + block).digest()

    def update(self, data: bytes) -> None:
        """Hash the whole blocks of ``data`` (after any bytes left from the last call)."""
        view = self._pending + data if self._pending else data
        whole = len(view) - len(view) % BLOCK
        self._leaves.extend(self._hash(view[i:i + BLOCK]) for i in range(0, whole, BLOCK))
        self._pending = bytes(view[whole:])
        self.data_size += len(data)

    def finish(self) -> tuple[bytes, bytes]:
        """(tree, root hash); VerityError when the data was empty or not whole blocks."""
        if self._pending or not self._leaves:
            raise VerityError(f"data size {self.data_size} is not a positive multiple of "
                              f"{BLOCK}")
        levels = []
        level = b"".join(self._leaves)
        while True:
            level += bytes(-len(level) % BLOCK)
            levels.append(level)
            if len(level) == BLOCK:
                break
            level = b"".join(self._hash(level[i:i + BLOCK]) for i in range(0, len(level), BLOCK))
        return b"".join(reversed(levels)), self._hash(levels[-1])
