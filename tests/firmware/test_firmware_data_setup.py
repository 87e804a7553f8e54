"""data-setup on a real disk: first boot makes /data, later boots keep it, foreign data is safe.

Issue 10 point 7: only a partition that never held data is formatted. A damaged primary
superblock or a damaged ext4 journal is repaired by e2fsck (from a backup superblock when the
primary is gone); a partition shorter than its file system, or one holding data data-setup does not
recognise, is left untouched, unmounted, and reported in /run/gridedge/data-status, and mark-good
does not reboot the unit over it.

The disk is an image file on a loop device with the unit's four-partition layout (smaller).
data-setup runs as on the unit, as root, in a private mount namespace and a chroot whose root
is an overlay of this machine's root (writes go to a tmpfs), with the tree's platform.sh,
data-setup and a platform.conf naming the loop device. So the real sfdisk, partx, blkid,
mkfs.ext4, e2fsck, resize2fs and mount act on a real block device, and nothing outside the
namespace sees a mount. What this cannot show — BusyBox's applets and the BeagleBone's MMC —
the QEMU boot tests (tests/qemu/) show.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.waiting import wait_until

OVERLAY = Path(__file__).resolve().parents[2] / "board/common/rootfs-overlay"
SECTOR = 512
DISK_SECTORS = 64 * 2048  # 64 MiB
# boot, rootfs A, rootfs B, data: 4 MiB each from 1 MiB, leaving 47 MiB free at the end.
LAYOUT = "label: dos\nstart=2048, size=8192, type=c\nsize=8192, type=83\nsize=8192, type=83\n"
DATA = "size=8192, type=83\n"


def partition(image: Path, with_data: bool = True) -> None:
    """Write the partition table (with or without the data partition) and slot A's file system."""
    subprocess.run(
        ["sfdisk", "-q", image], input=LAYOUT + (DATA if with_data else ""), text=True, check=True
    )
    loop = subprocess.run(
        [
            "losetup",
            "--find",
            "--show",
            "--offset",
            str(10240 * SECTOR),
            "--sizelimit",
            str(8192 * SECTOR),
            image,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-L", "rootfs", loop], check=True, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


class Loop:
    """A loop device over the image, with its partitions known to the kernel."""

    def __init__(self, image: Path) -> None:
        self.device = subprocess.run(
            ["losetup", "--find", "--show", "--partscan", image],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(["partx", "-a", self.device], capture_output=True)  # already known: fine
        numbers = subprocess.run(
            ["partx", "-g", "-o", "NR", self.device], capture_output=True, text=True
        ).stdout.split()
        wait_until(
            lambda: all(Path(f"{self.device}p{n}").exists() for n in numbers),
            10,
            f"the device nodes of {self.device}'s partitions {numbers}",
        )

    def close(self) -> None:
        """Detach the device (the namespace that mounted it has exited)."""
        subprocess.run(["losetup", "-d", self.device], check=True)


UNUSED_UID = 60999


def boot(loop: Loop, tmp_path: Path, after: str = "") -> subprocess.CompletedProcess[str]:
    """Run S00data-setup start as a boot would, then `after`, then the clean shutdown's stop."""
    work = tmp_path / f"ns{time.monotonic_ns()}"
    root = work / "root"
    root.mkdir(parents=True)
    (work / "after.sh").write_text(after + "\n")
    running = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True, check=True)
    assert str(UNUSED_UID) not in running.stdout.split()
    dev = loop.device
    script = textwrap.dedent(f"""\
        set -eu
        mount -t tmpfs tmpfs {work}/root
        mkdir {work}/root/merged {work}/root/up {work}/root/wk
        r={work}/root/merged
        mount -t overlay overlay -o lowerdir=/,upperdir={work}/root/up,workdir={work}/root/wk $r
        mount --rbind /dev $r/dev
        mount -t proc proc $r/proc
        mount -t sysfs sysfs $r/sys
        rm -rf $r/data $r/var/lib
        mkdir -p $r/var/lib/misc  # the image's /var/lib: nearly empty, as in Buildroot's skeleton
        mkdir -p $r/usr/libexec/gridedge $r/etc/gridedge
        cp -a {OVERLAY}/usr/lib/gridedge $r/usr/lib/
        cp -a {OVERLAY}/usr/libexec/gridedge/. $r/usr/libexec/gridedge/
        cp -a {OVERLAY}/etc/init.d/S00data-setup $r/etc/init.d/
        printf '%s\\n' GRIDEDGE_DATA_DISK={dev} GRIDEDGE_DATA_PARTITION=4 \\
            GRIDEDGE_DATA_DEVICE={dev}p4 GRIDEDGE_ROOTFS_A_DEVICE={dev}p2 \\
            GRIDEDGE_ROOTFS_B_DEVICE={dev}p3 GRIDEDGE_RAUC_COMPATIBLE=test \\
            >$r/etc/gridedge/platform.conf
        # A uid no process of this machine has: S00data-setup stop stops the
        # processes of user gridedge, and /proc here shows the whole machine.
        grep -q '^gridedge:' $r/etc/passwd || {{
            echo 'gridedge:x:{UNUSED_UID}:{UNUSED_UID}::/data/gridedge:/bin/false' >>$r/etc/passwd
            echo 'gridedge:x:{UNUSED_UID}:' >>$r/etc/group; }}
        status=0
        chroot $r /etc/init.d/S00data-setup start >/dev/null || status=$?
        echo "data-setup-status=$status"
        cp {work}/after.sh $r/after.sh
        chroot $r sh /after.sh
        chroot $r /etc/init.d/S00data-setup stop >/dev/null
        ! grep -q ' /data ' /proc/mounts
        """)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )


STATUS = "cat /run/gridedge/data-status"


def data_partition(loop: Loop) -> str:
    """The device node of the data partition."""
    return f"{loop.device}p4"


def digest(device: str, size: int = -1) -> str:
    """SHA-256 of a block device's first `size` bytes (all by default): proof nothing wrote."""
    with open(device, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def status_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The key=value lines of /run/gridedge/data-status that an `after` printed."""
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {k: v for k, v in pairs if k in {"state", "device", "reason"}}


def table(image: Path) -> list[dict]:
    """The partitions of the image, as sfdisk reads them."""
    out = subprocess.run(["sfdisk", "--json", image], check=True, capture_output=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[Path, list[Loop]]]:
    """An unpartitioned 64 MiB image, and a list of loop devices detached afterwards."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(DISK_SECTORS * SECTOR)
    loops: list[Loop] = []
    yield image, loops
    for loop in loops:
        loop.close()


def attach(image: Path, loops: list[Loop]) -> Loop:
    """Attach the image and remember to detach it."""
    loop = Loop(image)
    loops.append(loop)
    return loop


def test_first_boot_makes_and_grows_data(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """A blank data partition is grown to the end of the disk, formatted, mounted, laid out."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    result = boot(
        loop,
        tmp_path,
        after=(
            "grep -E ' /data | /var/lib ' /proc/mounts;"
            " stat -c '%n %U %a' /data/gridedge /data/rauc;"
            " test -d /data/var-lib/misc && echo var-lib-seeded; df -k /data | tail -n 1"
        ),
    )
    assert "data-setup-status=0" in result.stdout, result.stderr
    assert "making an ext4 file system (first boot)" in result.stderr
    mounts = [line.split()[:3] for line in result.stdout.splitlines() if line.startswith("/dev/")]
    assert [f"{loop.device}p4", "/data", "ext4"] in mounts
    assert [f"{loop.device}p4", "/var/lib", "ext4"] in mounts
    assert "/data/gridedge gridedge 750" in result.stdout
    assert "/data/rauc root 700" in result.stdout
    assert "var-lib-seeded" in result.stdout  # the image's /var/lib was copied before the bind
    data = table(image)[3]
    assert data["start"] + data["size"] == DISK_SECTORS  # grown to the very end
    size_kib = int(result.stdout.splitlines()[-1].split()[1])
    assert size_kib > 40 * 1024  # the file system fills the grown partition, not the 4 MiB one
    label = subprocess.run(
        ["blkid", "-o", "value", "-s", "LABEL", f"{loop.device}p4"], capture_output=True, text=True
    )
    assert label.stdout.strip() == "gridedge-data"
    with open(f"{loop.device}p4", "rb") as f:
        assert f.read(512) == bytes(512)  # data-setup's mark while formatting is gone


def test_later_boot_keeps_what_data_holds(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """The next boot mounts the same file system and keeps its files, fixing their owners."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    first = boot(
        loop,
        tmp_path,
        # As provisioning on a workstation leaves them: owned by root, the key readable.
        after="echo reading-42 >/data/gridedge/journal; echo x >/data/gridedge/gridedge.toml; "
        "echo key >/data/gridedge/unit.key; chown root:root /data/gridedge/unit.key; "
        "chmod 0644 /data/gridedge/unit.key",
    )
    assert "data-setup-status=0" in first.stdout, first.stderr
    second = boot(
        loop,
        tmp_path,
        after="cat /data/gridedge/journal; stat -c '%n %U %a' /data/gridedge/*",
    )
    assert "data-setup-status=0" in second.stdout, second.stderr
    assert "making an ext4" not in second.stderr
    assert "growing" not in second.stderr
    assert "reading-42" in second.stdout
    assert "/data/gridedge/unit.key gridedge 600" in second.stdout  # private again
    assert "/data/gridedge/gridedge.toml gridedge" in second.stdout


def test_foreign_file_system_is_never_formatted(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """A data partition holding something else (FAT here) is left alone; /data stays unmounted."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    subprocess.run(
        ["mkfs.vfat", "-n", "FOREIGN", f"{loop.device}p4"], check=True, capture_output=True
    )
    result = boot(loop, tmp_path, after="grep ' /data ' /proc/mounts || echo not-mounted")
    assert "data-setup-status=1" in result.stdout
    assert "not mounting and not formatting it" in result.stderr
    assert "not-mounted" in result.stdout
    blkid = subprocess.run(
        ["blkid", "-o", "value", "-s", "TYPE", f"{loop.device}p4"], capture_output=True, text=True
    )
    assert blkid.stdout.strip() == "vfat"


def test_missing_data_partition_is_created(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """A disk laid out without the data partition gets one over the free space at the end."""
    image, loops = loop_disk
    partition(image, with_data=False)
    loop = attach(image, loops)
    result = boot(loop, tmp_path, after="grep ' /data ' /proc/mounts")
    assert "data-setup-status=0" in result.stdout, result.stderr
    assert f"{loop.device}p4 /data ext4" in result.stdout
    parts = table(image)
    assert len(parts) == 4
    assert parts[3]["start"] == parts[2]["start"] + parts[2]["size"]
    assert parts[3]["start"] + parts[3]["size"] == DISK_SECTORS


def test_blank_looking_data_is_not_formatted_when_blkid_sees_no_slot(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """If blkid cannot even see slot A's root file system, data-setup formats nothing."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    subprocess.run(["wipefs", "-a", f"{loop.device}p2"], check=True, capture_output=True)
    result = boot(
        loop, tmp_path, after=f"grep ' /data ' /proc/mounts || echo not-mounted; {STATUS}"
    )
    assert "data-setup-status=1" in result.stdout
    assert "no ext4 root file system in either slot" in result.stderr
    assert status_of(result)["state"] == "error"  # data-setup's failure, not the disk's
    assert "not-mounted" in result.stdout
    blkid = subprocess.run(["blkid", f"{loop.device}p4"], capture_output=True, text=True)
    assert " TYPE=" not in blkid.stdout  # still blank: not formatted


def provisioned_unit(image: Path, loops: list[Loop], tmp_path: Path, mkfs: list[str]) -> Loop:
    """A unit after its first boot, with a reading in its journal on /data.

    `mkfs` is the file system a workstation made on the data partition, already grown to the
    end of the disk, before that boot ([] leaves both to data-setup).
    """
    partition(image)
    if mkfs:
        subprocess.run(["sfdisk", "-q", "-N", "4", image], input=",+", text=True, check=True)
    loop = attach(image, loops)
    if mkfs:
        subprocess.run([*mkfs, data_partition(loop)], check=True, capture_output=True)
    first = boot(loop, tmp_path, after=f"echo reading-42 >/data/gridedge/journal; {STATUS}")
    assert "data-setup-status=0" in first.stdout, first.stderr
    assert status_of(first)["state"] == ("mounted" if mkfs else "formatted")
    return loop


@pytest.mark.parametrize(
    "mkfs",
    [[], ["mkfs.ext4", "-q", "-b", "2048", "-L", "gridedge-data"]],
    ids=["made-by-data-setup", "made-on-a-workstation-2k-blocks"],
)
def test_point7_damaged_primary_superblock_is_repaired_not_formatted(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path, mkfs: list[str]
) -> None:
    """Zeroed primary superblock: blkid sees nothing, e2fsck recovers it from a backup."""
    image, loops = loop_disk
    loop = provisioned_unit(image, loops, tmp_path, mkfs)
    with open(data_partition(loop), "r+b") as f:
        f.seek(1024)
        f.write(bytes(1024))
    blkid = subprocess.run(["blkid", data_partition(loop)], capture_output=True, text=True)
    assert " TYPE=" not in blkid.stdout  # what made the old data-setup format it
    result = boot(loop, tmp_path, after=f"cat /data/gridedge/journal; {STATUS}")
    assert "data-setup-status=0" in result.stdout, result.stderr
    assert "making an ext4" not in result.stderr
    assert "reading-42" in result.stdout
    assert "from the backup superblock at block" in result.stderr
    assert status_of(result)["state"] == "repaired"


def test_point7_damaged_journal_is_repaired_not_formatted(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """A power cut left the ext4 journal to replay, and its superblock is garbage."""
    image, loops = loop_disk
    loop = provisioned_unit(image, loops, tmp_path, [])
    dev = data_partition(loop)
    subprocess.run(
        ["debugfs", "-w", "-R", "feature needs_recovery", dev], check=True, capture_output=True
    )
    block = subprocess.run(
        ["debugfs", "-R", "bmap <8> 0", dev], check=True, capture_output=True, text=True
    ).stdout
    size = (
        subprocess.run(["dumpe2fs", "-h", dev], check=True, capture_output=True, text=True)
        .stdout.split("Block size:")[1]
        .split()[0]
    )
    with open(dev, "r+b") as f:
        f.seek(int(block) * int(size))
        f.write(b"\xa5" * 4096)
    result = boot(loop, tmp_path, after=f"cat /data/gridedge/journal; {STATUS}")
    assert "data-setup-status=0" in result.stdout, result.stderr
    assert "making an ext4" not in result.stderr
    assert "reading-42" in result.stdout
    assert status_of(result)["state"] == "repaired"


def test_point7_truncated_partition_is_left_untouched_and_reported(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """/data copied to a smaller card: the partition ends before its file system does."""
    image, loops = loop_disk
    loop = provisioned_unit(image, loops, tmp_path, [])
    loop.close()
    loops.remove(loop)
    small = 48 * 2048  # sectors
    with image.open("r+b") as f:
        f.truncate(small * SECTOR)
    # The table made to fit the smaller disk, as a copying tool does: the partition ends at the
    # end of the disk, so data-setup cannot grow it back.
    start = table(image)[3]["start"]
    subprocess.run(
        ["sfdisk", "-q", "-N", "4", image], input=f"{start},{small - start}", text=True, check=True
    )
    loop = attach(image, loops)
    before = digest(data_partition(loop))
    result = boot(
        loop, tmp_path, after=f"grep ' /data ' /proc/mounts || echo not-mounted; {STATUS}"
    )
    assert "data-setup-status=1" in result.stdout
    assert "not-mounted" in result.stdout
    assert "making an ext4" not in result.stderr
    status = status_of(result)
    assert status["state"] == "fault"
    assert status["device"] == data_partition(loop)
    assert "larger than the partition" in status["reason"]
    assert digest(data_partition(loop)) == before


def test_point7_unrecognised_data_is_not_formatted(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """No signature and no superblock, but not blank either: it may be data; a person decides."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    with open(data_partition(loop), "r+b") as f:
        f.seek(300 * 1024)
        f.write(b"meter 0042 interval 2024-05-01T00:15 1234 Wh\n" * 100)
    old_size = 8192 * SECTOR
    before = digest(data_partition(loop), old_size)
    result = boot(
        loop, tmp_path, after=f"grep ' /data ' /proc/mounts || echo not-mounted; {STATUS}"
    )
    assert "data-setup-status=1" in result.stdout
    assert "not-mounted" in result.stdout
    assert "making an ext4" not in result.stderr
    status = status_of(result)
    assert status["state"] == "fault"
    assert "not formatting" in status["reason"]
    # The partition was grown to the end of the disk (the table changed); what it held did not.
    assert digest(data_partition(loop), old_size) == before


MAKING_MARK = b"gridedge data-setup: making a file system on this partition"


def test_point7_first_boot_cut_off_while_formatting_is_formatted_again(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """The power went during the first boot's mkfs: half its metadata, no superblock yet."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    with open(data_partition(loop), "r+b") as f:
        f.write(MAKING_MARK)  # what data-setup writes before mkfs and clears after it
        f.seek(300 * 1024)
        f.write(b"\xff" * 2048 + b"\x01\x02" * 4096)  # bitmaps, an inode table block
    result = boot(loop, tmp_path, after=STATUS)
    assert "data-setup-status=0" in result.stdout, result.stderr
    assert "cut off while making the file system" in result.stderr
    assert status_of(result)["state"] == "formatted"
    with open(data_partition(loop), "rb") as f:
        assert f.read(512) == bytes(512)  # the mark is cleared once the file system is made


MARK_GOOD = """\
mkdir -p /stub
printf '#!/bin/sh\\necho "$(basename "$0") $*" >>/stub/calls\\n' >/stub/reboot
cp /stub/reboot /stub/rauc
chmod +x /stub/reboot /stub/rauc
echo GRIDEDGE_HEALTH_TIMEOUT=0 >>/etc/gridedge/platform.conf
PATH=/stub:$PATH timeout 20 /usr/libexec/gridedge/mark-good; echo mark-good-status=$?
cat /stub/calls 2>/dev/null || echo no-calls
"""


def test_point7_mark_good_does_not_reboot_over_a_data_fault(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """A reboot cannot repair the disk: with a /data fault, mark-good neither reboots nor marks."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    subprocess.run(
        ["mkfs.vfat", "-n", "FOREIGN", data_partition(loop)], check=True, capture_output=True
    )
    after = MARK_GOOD + "echo state=error >/run/gridedge/data-status\n" + MARK_GOOD
    result = boot(loop, tmp_path, after=after)
    assert "data-setup-status=1" in result.stdout
    fault, error = result.stdout.split("mark-good-status=")[1:]
    assert fault.startswith("0") and "no-calls" in fault, result.stderr
    assert "not rebooting" in result.stderr
    # Control: data-setup itself failed (state=error), which a bad firmware can cause: the
    # usual rule applies, /data not mounted is never healthy, and the slot is given up.
    assert "reboot" in error


def test_mark_good_leaves_the_reason_for_the_update_agent(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """An unhealthy slot after an update: before its reboot, mark-good writes which slot and
    what `gridedge health --running` said to DATA_DIR/firmware/last-failure.txt, which the
    agent on the other slot reports as ROLLED_BACK (docs/updates.md, "The unit")."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    after = """\
echo 'console=ttyS0 rauc.slot=B quiet' >/tmp/cmdline
mount --bind /tmp/cmdline /proc/cmdline
mkdir -p /data/gridedge/firmware
echo 'data_dir = "/data/gridedge"' >/data/gridedge/gridedge.toml
chown -R gridedge:gridedge /data/gridedge
printf '#!/bin/sh\\necho "NOT RUNNING:"\\necho "  - uplink is not running (restarts: 4, last \
error: boom)"\\necho "  note: 2 meters behind"\\nexit 1\\n' >/usr/bin/gridedge
chmod +x /usr/bin/gridedge
""" + MARK_GOOD + "cat /data/gridedge/firmware/last-failure.txt\n"
    result = boot(loop, tmp_path, after=after)
    assert "data-setup-status=0" in result.stdout, result.stderr
    assert "reboot" in result.stdout.split("mark-good-status=")[1], result.stderr
    assert ("slot B not healthy after 0 s: uplink is not running (restarts: 4, last error: "
            "boom)\n") in result.stdout, result.stdout + result.stderr


def test_mark_good_says_the_slot_is_good_for_this_boot(
    loop_disk: tuple[Path, list[Loop]], tmp_path: Path
) -> None:
    """A healthy slot: `rauc status mark-good`, then /run/gridedge/slot-good, which the update
    agent needs (RAUC's U-Boot backend calls a slot on trial "good" too)."""
    image, loops = loop_disk
    partition(image)
    loop = attach(image, loops)
    after = """\
echo 'console=ttyS0 rauc.slot=A quiet' >/tmp/cmdline
mount --bind /tmp/cmdline /proc/cmdline
mkdir -p /data/gridedge
echo 'data_dir = "/data/gridedge"' >/data/gridedge/gridedge.toml
chown -R gridedge:gridedge /data/gridedge
printf '#!/bin/sh\\necho running\\n' >/usr/bin/gridedge
chmod +x /usr/bin/gridedge
rm -f /run/gridedge/slot-good
""" + MARK_GOOD + "cat /run/gridedge/slot-good\n"
    result = boot(loop, tmp_path, after=after)
    assert "rauc status mark-good" in result.stdout, result.stdout + result.stderr
    assert "slot A marked good after 0 s\n" in result.stdout, result.stdout + result.stderr
