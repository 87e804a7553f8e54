"""The U-Boot boot scripts: they compile, share one slot choice, and choose right in real U-Boot.

The scripts run in Debian's qemu_arm U-Boot under qemu-system-arm: the compiled boot.scr is put
in RAM by QEMU's loader device, the A/B variables are set at the U-Boot prompt, and the script
is sourced. There is no disk, so loading the kernel fails and the script resets, which with
-no-reboot ends QEMU: each run shows the slot chosen, the counters saved and the order of the
steps. Booting a kernel from the chosen slot is what the QEMU boot tests (tests/qemu/) prove.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pexpect
import pytest

from support.firmware_tree import (
    BOARD,
    BUILDROOT_BOARDS,
    genimage_partitions,
    read_assignments,
    slot_choice_block,
)

UBOOT_QEMU = Path("/usr/lib/u-boot/qemu_arm/u-boot.bin")
SCRIPT_ADDR = 0x48000000
BOOT_SCRIPTS = sorted(BOARD.glob("*/boot.cmd"))
BUILDROOT_SCRIPTS = [BOARD / b / "boot.cmd" for b in BUILDROOT_BOARDS]


def compile_script(source: Path, out: Path) -> Path:
    """Compile a boot.cmd into a U-Boot script image with Debian's mkimage."""
    subprocess.run(
        ["mkimage", "-A", "arm", "-O", "linux", "-T", "script", "-C", "none", "-d", source, out],
        check=True,
        capture_output=True,
    )
    return out


def run_in_uboot(script: Path, env: dict[str, str]) -> str:
    """Source the compiled script in QEMU's U-Boot with `env` set; return the console output."""
    child = pexpect.spawn(
        "qemu-system-arm",
        [
            "-M",
            "virt,highmem=off",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-bios",
            str(UBOOT_QEMU),
            "-device",
            f"loader,file={script},addr={SCRIPT_ADDR:#x},force-raw=on",
        ],
        encoding="utf-8",
        timeout=60,
    )
    try:
        child.expect("Hit any key to stop autoboot")
        child.send("\r")
        child.expect("=> ")
        commands = [f'setenv {name} "{value}"' for name, value in env.items()]
        child.sendline(
            "; ".join([*commands, f"source {SCRIPT_ADDR:#x}"])
            if commands
            else f"source {SCRIPT_ADDR:#x}"
        )
        child.expect(pexpect.EOF)
        return child.before
    finally:
        child.close(force=True)


@pytest.mark.parametrize("source", BOOT_SCRIPTS, ids=lambda p: p.parent.name)
def test_boot_script_compiles_with_debian_mkimage(source: Path, tmp_path: Path) -> None:
    """mkimage turns each boot.cmd into a script image that mkimage -l reads back whole."""
    scr = compile_script(source, tmp_path / "boot.scr")
    listing = subprocess.run(["mkimage", "-l", scr], check=True, capture_output=True, text=True)
    assert "Image Type:   ARM Linux Script (uncompressed)" in listing.stdout
    assert f"Image 0: {source.stat().st_size} Bytes" in listing.stdout


@pytest.mark.parametrize("source", BOOT_SCRIPTS, ids=lambda p: p.parent.name)
def test_boot_script_avoids_setexpr(source: Path) -> None:
    """No setexpr: am335x_evm (and Debian's u-boot-omap) is built without it."""
    code = "\n".join(line for line in source.read_text().splitlines() if not line.startswith("#"))
    assert "setexpr" not in code


def test_slot_choice_is_identical_in_every_boot_script() -> None:
    """The BeagleBone, Buildroot-QEMU and CI scripts choose the slot with the same lines."""
    assert len(BOOT_SCRIPTS) >= 3, BOOT_SCRIPTS
    blocks = {source.parent.name: slot_choice_block(source) for source in BOOT_SCRIPTS}
    reference = blocks["beaglebone"]
    assert "BOOT_ORDER" in reference
    for board, block in blocks.items():
        assert block == reference, f"board/{board}/boot.cmd chooses the slot differently"


def test_uboot_environment_sits_below_the_first_partition() -> None:
    """fw_env.config, uboot.fragment and genimage.cfg agree on where the environment is."""
    fragment = read_assignments(BOARD / "beaglebone/uboot.fragment")
    lines = [
        line.split()
        for line in (BOARD / "beaglebone/rootfs-overlay/etc/fw_env.config").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == [
        ["/dev/mmcblk0", fragment["CONFIG_ENV_OFFSET"], fragment["CONFIG_ENV_SIZE"]],
        ["/dev/mmcblk0", fragment["CONFIG_ENV_OFFSET_REDUND"], fragment["CONFIG_ENV_SIZE"]],
    ]
    first = genimage_partitions(BOARD / "beaglebone/genimage.cfg")[0]
    end = int(fragment["CONFIG_ENV_OFFSET_REDUND"], 16) + int(fragment["CONFIG_ENV_SIZE"], 16)
    assert first.offset is not None and end <= first.offset
    assert "saveenv" in (BOARD / "beaglebone/boot.cmd").read_text()


def test_qemu_variant_raw_area_matches_fw_env_config() -> None:
    """The QEMU variant's script reads and writes the raw area fw_env.config names."""
    script = (BOARD / "qemu-vexpress/boot.cmd").read_text()
    device, offset, size = next(
        line.split()
        for line in (BOARD / "qemu-vexpress/rootfs-overlay/etc/fw_env.config")
        .read_text()
        .splitlines()
        if line and not line.startswith("#")
    )
    blocks = int(size, 16) // 512
    block = int(offset, 16) // 512
    assert f"mmc read ${{ab_addr}} {block:#x} {blocks:#x}" in script
    assert f"mmc write ${{ab_addr}} {block:#x} {blocks:#x}" in script
    assert script.count(f"0x{int(size, 16):x} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT") == 2
    assert device == "/dev/mmcblk0"


# (variables before the script, slot booted or None, BOOT_A_LEFT and BOOT_B_LEFT saved)
SCENARIOS = {
    "blank environment boots A": ({}, "A", "2", "3"),
    "A first, last attempt": (
        {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "3"},
        "A",
        "0",
        "3",
    ),
    "A spent, falls back to B": (
        {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "3"},
        "B",
        "0",
        "2",
    ),
    "B first after an update": (
        {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"},
        "B",
        "3",
        "2",
    ),
    "B spent, back to A": (
        {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"},
        "A",
        "2",
        "0",
    ),
    "only A listed": ({"BOOT_ORDER": "A", "BOOT_A_LEFT": "2", "BOOT_B_LEFT": "3"}, "A", "1", "3"),
    "nothing left: both refilled, reset": (
        {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"},
        None,
        "3",
        "3",
    ),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Buildroot boards' boot scripts, compiled once."""
    out = tmp_path_factory.mktemp("scr")
    return {
        s.parent.name: compile_script(s, out / f"{s.parent.name}.scr") for s in BUILDROOT_SCRIPTS
    }


# The slot choice is the same block in every script (test above), so the QEMU variant's
# wrapper (raw-area read and write instead of saveenv) is run on two scenarios only.
CASES = [("beaglebone", s) for s in SCENARIOS] + [
    ("qemu-vexpress", "B first after an update"),
    ("qemu-vexpress", "nothing left: both refilled, reset"),
]


@pytest.mark.parametrize(("board", "scenario"), CASES, ids=lambda s: s.replace(" ", "-"))
def test_script_chooses_and_saves_the_slot_in_uboot(
    compiled: dict[str, Path], board: str, scenario: str
) -> None:
    """In real U-Boot the script picks the slot of the RAUC scheme and saves before booting."""
    env, slot, a_left, b_left = SCENARIOS[scenario]
    console = run_in_uboot(compiled[board], env)
    if board == "qemu-vexpress":
        # QEMU's virt U-Boot has no MMC; the raw-area reads and writes fail, the rest runs.
        console = console.replace("Unknown command 'mmc' - try 'help'", "")
    assert "Unknown command" not in console and "syntax error" not in console, console
    booting = re.findall(
        r"A/B: booting slot (\w) \(mmc 0:(\d)\), BOOT_A_LEFT=(\d) BOOT_B_LEFT=(\d)", console
    )
    if slot is None:
        assert "no slot has attempts left" in console
        assert not booting
        assert "resetting" in console
        if board == "beaglebone":
            assert console.index("Saving Environment") < console.index("resetting")
        return
    assert booting == [(slot, "2" if slot == "A" else "3", a_left, b_left)], console
    if board == "beaglebone":
        # The decrement is saved before the kernel is loaded, so a hang still costs an attempt.
        assert console.index("Saving Environment") < console.index("A/B: booting slot")
    assert f"A/B: slot {slot} did not start" in console
