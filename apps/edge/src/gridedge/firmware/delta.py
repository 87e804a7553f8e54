"""A delta's format, and the step that turns its patched output back into the bundle.

The format (docs/updates.md, "Deltas"; the cloud's side is gridcloud.bundles.make_delta):
a delta is ``zstd -19 --long=27 --patch-from=BASE`` of the target bundle *without its
dm-verity hash tree*.  ``zstd -d --long=27 --patch-from=BASE`` therefore gives::

    squashfs || CMS || u64 BE size of the CMS

and the unit puts the tree back between the SquashFS and the CMS, which makes the RAUC
bundle ``squashfs || tree || CMS || size`` again.  Why cut the tree: it is sha256 of every
4096-byte block of the SquashFS, so after the first changed block (whose later blocks all
move) all of it is new and incompressible, more than half of a delta that carried it
(measured by bench/bench_ota.py).  The unit rebuilds it from the SquashFS it has just
rebuilt, with the salt of the manifest in the CMS (:class:`gridedge.firmware.verity.
TreeBuilder`), and checks its root against the manifest's ``verity-hash`` and its size
against ``verity-size``.  Nothing here is trusted yet: the agent then checks the whole
rebuilt bundle's sha256 against the offer's ``target_sha256``, and ``rauc info`` checks the
signature, as for every bundle.

The file is rewritten in place, piece by piece (the SquashFS is read 1 MiB at a time, only
the hashes and the CMS are held): a BeagleBone has 512 MiB of RAM, and /data need not hold
a second copy.  :func:`insert_tree` is a generator that yields between pieces, so the
reactor runs between them (``task.cooperate``); a caller without a reactor just exhausts it.

Tests: tests/edge/test_firmware_verity.py, tests/edge/test_firmware_agent.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from gridedge.firmware.manifest import ManifestError, cms_span, read_manifest
from gridedge.firmware.verity import BLOCK, TreeBuilder, VerityError, tree_size

__all__ = ["DeltaError", "insert_tree"]

#: A RAUC CMS is a few KiB (manifest, signer certificate); more is not a bundle's tail.
MAX_CMS = 1 << 20
PIECE = 1 << 20


class DeltaError(ValueError):
    """The patched output is not ``squashfs || CMS || size`` of a verity bundle."""


def insert_tree(path: Path, piece: int = PIECE) -> Iterator[None]:
    """Rewrite ``path`` (``squashfs || CMS || size``) as the whole bundle, its hash tree put
    back; yields between pieces of the SquashFS.  DeltaError when it cannot be that."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        if size < 8:
            raise DeltaError(f"the patched output is {size} bytes: no bundle tail")
        f.seek(size - 8)
        size_field = f.read(8)
        try:
            start, end = cms_span(size, size_field)
            if end - start > MAX_CMS:
                raise DeltaError(f"signature of {end - start} bytes: not a bundle's")
            f.seek(start)
            cms = f.read(end - start)
            manifest = read_manifest(cms)
        except ManifestError as exc:
            raise DeltaError(f"the patched output has no verity manifest: {exc}") from None
        if start % BLOCK or manifest.verity_size != tree_size(start):
            raise DeltaError(f"a {start}-byte SquashFS does not take the manifest's "
                             f"{manifest.verity_size}-byte hash tree")
        builder = TreeBuilder(manifest.verity_salt)
        f.seek(0)
        done = 0
        while done < start:
            data = f.read(min(piece, start - done))
            if not data:
                raise DeltaError("the patched output shrank while it was read")
            builder.update(data)
            done += len(data)
            yield None
        try:
            tree, root = builder.finish()
        except VerityError as exc:
            raise DeltaError(str(exc)) from None
        if root != manifest.verity_hash:
            raise DeltaError("the rebuilt SquashFS does not match the signed verity hash")
        f.seek(start)
        f.write(tree)
        f.write(cms)
        f.write(size_field)
        f.flush()
        os.fsync(f.fileno())
