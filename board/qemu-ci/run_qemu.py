#!/usr/bin/env python3
"""Run the CI image in qemu-system-arm: the one place that knows QEMU's command line.

Used by 'make qemu-run' (console attached to the terminal) and by the boot tests in
tests/qemu/ (console driven with pexpect). Facts behind the options:
- '-M virt,highmem=off': plain 'virt' gives no virtio-pci disks to Debian's non-LPAE kernel;
- '-bios u-boot.bin': Debian's qemu_arm U-Boot, which runs boot.scr from the first partition;
- 'romfile=' on the NIC: no iPXE option ROM is needed (or installed);
- '-smp 1' boots as fast as '-smp 2' under TCG and leaves a core to the host side of a test;
- the radio module: an optional host serial device (a pty of gridsim) appears in the guest as
  /dev/ttyS1, the second 16550 UART of a PCI serial card (8250_pci is built into the kernel),
  the radio's port on the BeagleBone too;
- user networking: the guest (10.0.2.15, board/qemu-ci/rootfs-overlay/etc/init.d/S40network)
  reaches the host's loopback as 10.0.2.2; a forward (hostfwd) opens a port on the host's
  loopback only, never on its other interfaces, to a TCP port of the guest (the local web
  page's, for the boot tests and 'make qemu-run --forward 8443:8443').

Tests: tests/qemu/ (every boot test runs QEMU through command()).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

UBOOT = Path("/usr/lib/u-boot/qemu_arm/u-boot.bin")
DEFAULT_DISK = Path(__file__).resolve().parents[2] / "output/ci-image/disk.img"


GUEST_ADDRESS = "10.0.2.15"


def command(
    disk: Path,
    *,
    radio: str | None = None,
    memory_mb: int = 512,
    exit_on_reset: bool = False,
    forwards: Sequence[tuple[int, int]] = (),
) -> list[str]:
    """The qemu-system-arm command line booting disk; console on stdio.

    exit_on_reset: QEMU exits when the guest resets, for a harness that starts it again (a
    fresh QEMU boots the kernel in 2 s; after a reset inside one QEMU it takes 15 s).
    forwards: (host port, guest port) pairs: 127.0.0.1:host port on the host reaches the
    guest's GUEST_ADDRESS:guest port.
    """
    netdev = "user,id=net0" + "".join(
        f",hostfwd=tcp:127.0.0.1:{host}-{GUEST_ADDRESS}:{guest}" for host, guest in forwards
    )
    args = [
        "qemu-system-arm",
        "-M", "virt,highmem=off",
        "-m", str(memory_mb),
        "-smp", "1",
        "-nographic",
        "-bios", str(UBOOT),
        "-drive", f"if=none,file={disk},format=raw,id=disk0",
        "-device", "virtio-blk-pci,drive=disk0",
        "-netdev", netdev,
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if exit_on_reset:
        args.append("-no-reboot")
    if radio is not None:
        # Two UARTs, the radio on the second: /dev/ttyS1, as on the BeagleBone.
        args += [
            "-chardev", "null,id=uart0",
            "-chardev", f"serial,id=radio,path={radio}",
            "-device", "pci-serial-2x,chardev1=uart0,chardev2=radio",
        ]  # fmt: skip
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description="Boot the CI image with the console attached.")
    parser.add_argument("--disk", type=Path, default=DEFAULT_DISK)
    parser.add_argument(
        "--fresh-from",
        type=Path,
        help="copy this image to --disk first when --disk is missing or older (keeps the "
        "built image pristine for the tests; the copy keeps its /data between runs)",
    )
    parser.add_argument("--radio", help="host serial device for the guest's /dev/ttyS1")
    parser.add_argument(
        "--forward",
        action="append",
        default=[],
        metavar="HOST:GUEST",
        help="forward 127.0.0.1:HOST on this machine to the guest's TCP port GUEST (repeatable)",
    )
    args = parser.parse_args()
    source = args.fresh_from
    if source is not None:
        if not source.exists():
            print(f"{source} does not exist: run 'make ci-image' first", file=sys.stderr)
            return 1
        if not args.disk.exists() or args.disk.stat().st_mtime < source.stat().st_mtime:
            print(f"qemu-run: {args.disk} is a fresh copy of {source}", flush=True)
            subprocess.run(["cp", "--sparse=always", str(source), str(args.disk)], check=True)
    if not args.disk.exists():
        print(f"{args.disk} does not exist: run 'make ci-image' first", file=sys.stderr)
        return 1
    print("qemu-run: the unit's root shell is on this console; Ctrl-A X quits QEMU", flush=True)
    try:
        forwards = [(int(h), int(g)) for h, _, g in (f.partition(":") for f in args.forward)]
    except ValueError:
        print("--forward takes HOST:GUEST port numbers, e.g. 8443:8443", file=sys.stderr)
        return 2
    cmd = command(args.disk, radio=args.radio, forwards=forwards)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
