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

Tests: tests/edge/test_firmware_verity.py.
"""

from __future__ import annotations

import hashlib
import itertools

__all__ = ["BLOCK", "VerityError", "VerityTree"]

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
