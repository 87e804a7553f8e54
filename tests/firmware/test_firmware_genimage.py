"""The SD card layout: Debian's genimage lays out each board's genimage.cfg from stand-ins.

The stand-ins are small files in place of MLO, u-boot.img and the root file system (a real
ext4 made with mkfs.ext4, a real boot.scr made with mkimage), so the run takes a second. The
result is read back with sfdisk --json and mtools and compared with the numbers in
docs/firmware.md and genimage.cfg.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from support.firmware_tree import BOARD, MIB, docs_partition_map, genimage_partitions

SECTOR = 512


def make_stand_ins(folder: Path) -> dict[str, bytes]:
    """Write MLO, u-boot.img, boot.scr and rootfs.ext4 stand-ins; return their contents."""
    folder.mkdir()
    contents = {"MLO": os.urandom(70_000), "u-boot.img": os.urandom(400_000)}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    subprocess.run(
        [
            "mkimage",
            "-A",
            "arm",
            "-O",
            "linux",
            "-T",
            "script",
            "-C",
            "none",
            "-d",
            BOARD / "beaglebone/boot.cmd",
            folder / "boot.scr",
        ],
        check=True,
        capture_output=True,
    )
    tree = folder.parent / "rootfs-tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/zImage").write_bytes(os.urandom(300_000))
    subprocess.run(
        ["mkfs.ext4", "-q", "-L", "rootfs", "-d", tree, folder / "rootfs.ext4", "16M"],
        check=True,
        capture_output=True,
    )
    for name in ("boot.scr", "rootfs.ext4"):
        contents[name] = (folder / name).read_bytes()
    return contents


def lay_out(board: str, tmp_path: Path) -> tuple[Path, dict[str, bytes], list[dict]]:
    """Run genimage on the board's config; return the image, stand-ins and sfdisk partitions."""
    stand_ins = make_stand_ins(tmp_path / "input")
    (tmp_path / "root").mkdir()
    (tmp_path / "output").mkdir()
    subprocess.run(
        [
            "genimage",
            "--config",
            BOARD / board / "genimage.cfg",
            "--inputpath",
            tmp_path / "input",
            "--outputpath",
            tmp_path / "output",
            "--rootpath",
            tmp_path / "root",
            "--tmppath",
            tmp_path / "tmp",
        ],
        check=True,
        capture_output=True,
    )
    image = tmp_path / "output/sdcard.img"
    table = json.loads(
        subprocess.run(["sfdisk", "--json", image], check=True, capture_output=True).stdout
    )["partitiontable"]
    assert table["label"] == "dos" and table["sectorsize"] == SECTOR
    return image, stand_ins, table["partitions"]


@pytest.mark.parametrize("board", ["beaglebone", "qemu-vexpress"])
def test_layout_matches_genimage_cfg(board: str, tmp_path: Path) -> None:
    """Partitions land where genimage.cfg says: boot at its offset, the rest back to back."""
    _, _, partitions = lay_out(board, tmp_path)
    wanted = [
        p for p in genimage_partitions(BOARD / board / "genimage.cfg") if p.in_partition_table
    ]
    assert len(partitions) == len(wanted) == 4
    expected_start = wanted[0].offset
    for got, want in zip(partitions, wanted, strict=True):
        assert got["start"] * SECTOR == expected_start, want.name
        if want.name != "boot":
            assert got["size"] * SECTOR == want.size, want.name
        assert int(got["type"], 16) == want.partition_type, want.name
        assert got.get("bootable", False) == want.bootable, want.name
        expected_start = (got["start"] + got["size"]) * SECTOR


def test_beaglebone_layout_matches_docs(tmp_path: Path) -> None:
    """The partition map in docs/firmware.md is the one genimage produces, to the byte."""
    _, _, partitions = lay_out("beaglebone", tmp_path)
    documented = docs_partition_map()
    got = {
        f"mmcblk0p{i}": (p["start"] * SECTOR, p["size"] * SECTOR)
        for i, p in enumerate(partitions, 1)
    }
    assert got == documented
    assert got["mmcblk0p1"] == (4 * MIB, 16 * MIB)
    assert got["mmcblk0p2"][0] == 20 * MIB and got["mmcblk0p3"][0] == 532 * MIB


def test_beaglebone_partition_contents(tmp_path: Path) -> None:
    """Boot holds MLO, u-boot.img and boot.scr; slot A holds the root file system, byte for byte."""
    image, stand_ins, partitions = lay_out("beaglebone", tmp_path)
    boot_offset = partitions[0]["start"] * SECTOR
    for name in ("MLO", "u-boot.img", "boot.scr"):
        copied = subprocess.run(
            ["mcopy", "-n", "-i", f"{image}@@{boot_offset}", f"::{name}", "-"],
            check=True,
            capture_output=True,
        ).stdout
        assert hashlib.sha256(copied).digest() == hashlib.sha256(stand_ins[name]).digest(), name
    rootfs = stand_ins["rootfs.ext4"]
    with image.open("rb") as f:
        f.seek(partitions[1]["start"] * SECTOR)
        assert f.read(len(rootfs)) == rootfs
        # The U-Boot environment area below the first partition is left blank: U-Boot
        # starts from its built-in environment and the boot script saves it there.
        f.seek(0x260000)
        assert f.read(0x40000) == bytes(0x40000)


def test_qemu_variant_image_is_a_power_of_two(tmp_path: Path) -> None:
    """QEMU accepts only SD card images whose size is a power of two: 2 GiB."""
    image, _, _ = lay_out("qemu-vexpress", tmp_path)
    assert image.stat().st_size == 2 * 1024 * MIB
