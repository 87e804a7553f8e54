"""The bundle's signed structure, read the way the agent reads it, against real verity
bundles from Debian's ``rauc bundle``: the manifest inside the CMS, the hash tree against
the signed root, every 4096-byte block against the tree, ``rauc info`` on a sparse file
that holds only the tail, and the delta format: the tree rebuilt from the SquashFS byte for
byte as rauc wrote it, cut by the cloud and put back by the unit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from gridcloud import bundles
from gridedge.firmware.delta import DeltaError, insert_tree
from gridedge.firmware.manifest import ManifestError, cms_span, econtent, read_manifest
from gridedge.firmware.rauc import BundleRefused, RaucSlots, SlotStatus, parse_status
from gridedge.firmware.verity import BLOCK, TreeBuilder, VerityError, VerityTree, tree_size
from twisted.internet import defer, reactor

from support.firmware_kit import Kit, make_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_kit(tmp_path_factory.mktemp("fwkit"))


@pytest.fixture(scope="module")
def bundle(kit: Kit) -> bytes:
    return kit.bundle("v5", "5.0").read_bytes()


def parts(blob: bytes) -> tuple[int, int, VerityTree]:
    start, end = cms_span(len(blob), blob[-8:])
    manifest = read_manifest(blob[start:end])
    data = start - manifest.verity_size
    return start, data, VerityTree(manifest.verity_salt, manifest.verity_hash, data,
                                   blob[data:start])


def test_manifest_and_tree_of_a_real_bundle(bundle: bytes) -> None:
    start, end = cms_span(len(bundle), bundle[-8:])
    manifest = read_manifest(bundle[start:end])
    assert (manifest.compatible, manifest.version, manifest.bundle_format) == \
        ("gridedge-qemu-ci", "5.0", "verity")
    assert len(manifest.verity_salt) == 32 and manifest.verity_size % BLOCK == 0
    data = start - manifest.verity_size
    assert bundle[:4] == b"hsqs" and data % BLOCK == 0
    assert data // BLOCK > 128, "big enough for a two-level tree"
    assert manifest.verity_size == tree_size(data)
    tree = VerityTree(manifest.verity_salt, manifest.verity_hash, data, bundle[data:start])
    assert tree.bad_block(0, bundle[:data]) is None
    assert b"[image.rootfs]" in econtent(bundle[start:end])


def test_every_flipped_block_is_found(bundle: bytes) -> None:
    _, data, tree = parts(bundle)
    for block in (0, 1, data // BLOCK // 2, data // BLOCK - 1):
        at = block * BLOCK + 77
        bad = bundle[:at] + bytes([bundle[at] ^ 1]) + bundle[at + 1:]
        chunk = (at // 32768) * 32768
        assert tree.bad_block(chunk, bad[chunk:chunk + 32768]) == block * BLOCK
    assert tree.bad_block(4096, bundle[:4096]) == 4096, "a block at the wrong offset"
    assert tree.bad_block(0, bundle[:100]) == 0, "a partial block inside the data"


def test_a_tampered_tree_or_root_is_refused(bundle: bytes) -> None:
    start, end = cms_span(len(bundle), bundle[-8:])
    manifest = read_manifest(bundle[start:end])
    data = start - manifest.verity_size
    tree = bytearray(bundle[data:start])
    tree[-5] ^= 1  # a leaf hash
    with pytest.raises(VerityError, match="inconsistent"):
        VerityTree(manifest.verity_salt, manifest.verity_hash, data, bytes(tree))
    with pytest.raises(VerityError, match="root"):
        VerityTree(manifest.verity_salt, bytes(32), data, bundle[data:start])
    with pytest.raises(VerityError, match="expected"):
        VerityTree(manifest.verity_salt, manifest.verity_hash, data, bundle[data:start - 4096])


def test_tree_builder_writes_raucs_tree_byte_for_byte(bundle: bytes) -> None:
    """The tree built from the SquashFS alone, fed in pieces that do not fall on blocks, is
    the tree ``rauc bundle`` wrote, and its root the signed verity-hash."""
    start, data, _ = parts(bundle)
    manifest = read_manifest(bundle[start:cms_span(len(bundle), bundle[-8:])[1]])
    builder = TreeBuilder(manifest.verity_salt)
    for at in range(0, data, 10_000):
        builder.update(bundle[at:min(at + 10_000, data)])
    tree, root = builder.finish()
    assert tree == bundle[data:start]
    assert root == manifest.verity_hash
    short = TreeBuilder(manifest.verity_salt)
    short.update(bundle[:BLOCK + 1])
    with pytest.raises(VerityError):
        short.finish()


@pytest_twisted.ensureDeferred
async def test_delta_format_round_trip(bundle: bytes, tmp_path: Path) -> None:
    """The cloud's cut (gridcloud.bundles.cut_tree: ``squashfs || CMS || size``) and the
    unit's insert_tree give back the bundle to the byte; a SquashFS changed in between (a
    patch gone wrong) is refused against the signed verity-hash."""
    whole = tmp_path / "whole.raucb"
    whole.write_bytes(bundle)
    cut = tmp_path / "cut.raucb"
    await defer.ensureDeferred(bundles.cut_tree(reactor, whole, cut))
    start, data, _ = parts(bundle)
    assert cut.read_bytes() == bundle[:data] + bundle[start:]
    assert bundles.squashfs_size(start) == data
    for _ in insert_tree(cut, piece=3 * BLOCK + 5):
        pass
    assert cut.read_bytes() == bundle
    bad = tmp_path / "bad.raucb"
    bad.write_bytes(bundle[:100] + bytes([bundle[100] ^ 1]) + bundle[101:data]
                    + bundle[start:])
    with pytest.raises(DeltaError, match="verity hash"):
        list(insert_tree(bad))
    bad.write_bytes(bundle[:data - 100] + bundle[start:])
    with pytest.raises(DeltaError, match="does not take"):
        list(insert_tree(bad))


def test_not_a_bundle_tail() -> None:
    with pytest.raises(ManifestError):
        cms_span(100, (10**6).to_bytes(8, "big"))
    with pytest.raises(ManifestError):
        read_manifest(b"\x30\x03\x02\x01\x01")
    with pytest.raises(ManifestError, match="indefinite"):
        read_manifest(b"\x30\x80\x00\x00")


@pytest_twisted.ensureDeferred
async def test_rauc_info_checks_the_signature_on_the_tail_alone(
        tmp_path: Path, kit: Kit, bundle: bytes) -> None:
    start, _ = cms_span(len(bundle), bundle[-8:])
    sparse = tmp_path / "tail.raucb"
    with sparse.open("wb") as f:
        f.truncate(len(bundle))
        f.seek(start)
        f.write(bundle[start:])
    assert os.stat(sparse).st_blocks * 512 < len(bundle) / 4
    info = await kit.tools().info(sparse)
    assert (info.compatible, info.version) == ("gridedge-qemu-ci", "5.0")
    assert "gridedge CI bundle signer" in info.signer
    with pytest.raises(BundleRefused, match="signature verification failed"):
        await type(kit.tools())(kit.other_keys.ca).info(sparse)


def test_rauc_status_json() -> None:
    data = {"compatible": "gridedge-beaglebone-black", "booted": "B", "boot_primary": "rootfs.1",
            "slots": [{"rootfs.0": {"class": "rootfs", "bootname": "A", "state": "inactive",
                                    "boot_status": "bad"}},
                      {"rootfs.1": {"class": "rootfs", "bootname": "B", "state": "booted",
                                    "boot_status": "good"}}]}
    status = parse_status(data)
    assert (status.compatible, status.booted, status.good) == \
        ("gridedge-beaglebone-black", "B", True)
    data["slots"][1]["rootfs.1"]["boot_status"] = "bad"  # type: ignore[index]
    assert not parse_status(data).good


@pytest_twisted.ensureDeferred
async def test_slots_good_needs_mark_good(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """RAUC's U-Boot backend says "good" while a slot has boot attempts left (a slot on trial
    too): RaucSlots also needs mark-good's file.  ``rauc`` here is a stand-in printing what
    the CI image's rauc printed (its service needs the unit's D-Bus and slots)."""
    status = {"compatible": "gridedge-qemu-ci", "variant": "", "booted": "B",
              "boot_primary": "rootfs.1", "slots": [
                  {"rootfs.1": {"class": "rootfs", "device": "/dev/vda3", "type": "ext4",
                                "bootname": "B", "state": "booted", "parent": None,
                                "mountpoint": "/", "boot_status": "good"}}]}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rauc").write_text(f"#!/bin/sh\ncat <<'END'\n{json.dumps(status)}\nEND\n")
    (bin_dir / "rauc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    marker = tmp_path / "slot-good"
    slots = RaucSlots(lambda: None, slot_good=marker)
    assert (await slots.status()) == SlotStatus("gridedge-qemu-ci", "B", False)
    marker.write_text("slot B marked good after 40 s\n")
    assert (await slots.status()) == SlotStatus("gridedge-qemu-ci", "B", True)
