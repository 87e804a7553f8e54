"""Update tests of the CI image: RAUC bundles installed from inside the unit.

Bundles are built on the host with Debian's rauc from the image's own rootfs.ext4 (changed
with debugfs where a test needs another version or a broken gridedge), signed with the CI
image's throwaway signing key (output/ci-image/test-keys), and downloaded by the unit from a
host HTTP server, as it would fetch them from the cloud.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from support.qemu_bundle import SigningKeys, changed_rootfs, http_server, start_bundle
from support.qemu_unit import Unit, boot_env, partition_digest
from support.qemu_world import World, wait_until_healthy, wait_until_marked_good
from support.waiting import wait_until

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def install(unit: Unit, port: int, name: str) -> tuple[int, str]:
    """Download bundle ``name`` from the host and 'rauc install' it: (exit status, output)."""
    unit.check(f"wget -q -O /tmp/{name} http://10.0.2.2:{port}/{name}", timeout=120)
    status, output = unit.run(f"rauc install /tmp/{name} 2>&1", timeout=300)
    unit.check(f"rm /tmp/{name}")
    return status, output


def slot_b_digest(disk: Path) -> str:
    """sha256 of slot B's partition in a (stopped) unit's disk image, read from the host."""
    return partition_digest(disk, 3)


def test_update_goes_to_slot_b_and_is_marked_good_once_healthy(
    make_unit: Callable[..., Unit], world: Callable[..., World], ci_image: Path, tmp_path: Path
) -> None:
    """A signed bundle installed from inside the unit is written to slot B; the unit reboots
    into B, runs the new version, and B is marked good only after gridedge is healthy."""
    rootfs = changed_rootfs(
        ci_image / "rootfs.ext4",
        tmp_path / "rootfs-v2.ext4",
        {"/etc/gridedge/version": (b"update-test-v2\n", 0o644)},
    )
    job = start_bundle(
        tmp_path / "bundles" / "v2.raucb",
        rootfs,
        SigningKeys.in_folder(ci_image / "test-keys"),
        version="update-test-v2",
    )
    w = world(meters=8, speed=300, duration="1d")
    unit = make_unit(radio=w.sim.port)
    assert unit.boot() == "A"
    w.provision(unit)
    wait_until_healthy(unit, 240)

    bundle = job.path()
    with http_server(bundle.parent) as port:
        status, output = install(unit, port, bundle.name)
    assert status == 0, output
    assert "Installing `/tmp/v2.raucb` succeeded" in output
    env = boot_env(unit)
    assert env["BOOT_ORDER"] == "B A" and env["BOOT_B_LEFT"] == "3"

    unit.check("reboot")
    assert unit.expect(r"A/B: booting slot (\w)", 240).group(1) == "B"
    unit.wait_for_shell()
    assert unit.value("cat /etc/gridedge/version") == "update-test-v2"
    assert "rauc.slot=B" in unit.value("cat /proc/cmdline")
    # Not yet good: the boot took an attempt, and only health gives it back.
    assert boot_env(unit)["BOOT_B_LEFT"] == "2"
    rows = w.stored_rows()
    wait_until_marked_good(unit, 300)
    assert boot_env(unit) == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    status = unit.check("rauc status --detailed")
    assert re.search(
        r"\[rootfs\.1\] \(/dev/vda3, ext4, booted\)\s+bootname: B\s+mounted: /\s+"
        r"boot status: good",
        status,
    ), status
    wait_until(lambda: w.stored_rows() > rows, 120, "new readings from slot B", interval=2)


def test_update_that_never_gets_healthy_rolls_back(
    make_unit: Callable[..., Unit], world: Callable[..., World], ci_image: Path, tmp_path: Path
) -> None:
    """A bundle whose gridedge never becomes healthy is not marked good: the unit reboots it
    until its attempts are used up, then comes back on slot A, which keeps working."""
    broken_gridedge = b"#!/bin/sh\n# Broken on purpose (test 4): never healthy.\n" + (
        b'case "$1" in run) exec sleep 100000 ;; *) exit 1 ;; esac\n'
    )
    platform = (ci_image / "rootfs/etc/gridedge/platform.conf").read_bytes()
    rootfs = changed_rootfs(
        ci_image / "rootfs.ext4",
        tmp_path / "rootfs-broken.ext4",
        {
            "/usr/bin/gridedge": (broken_gridedge, 0o755),
            "/etc/gridedge/version": (b"broken-test\n", 0o644),
            # Give up on health after 10 s rather than the image's own timeout.
            "/etc/gridedge/platform.conf": (platform + b"GRIDEDGE_HEALTH_TIMEOUT=10\n", 0o644),
        },
    )
    job = start_bundle(
        tmp_path / "bundles" / "broken.raucb",
        rootfs,
        SigningKeys.in_folder(ci_image / "test-keys"),
        version="broken-test",
    )
    # Three failing boots of slot B come before slot A is back: the meters keep reporting
    # (a simulated week at 300x outlasts the test), so slot A has readings to deliver.
    w = world(meters=8, speed=300, duration="7d")
    unit = make_unit(radio=w.sim.port)
    assert unit.boot() == "A"
    w.provision(unit)
    wait_until_healthy(unit, 240)
    version = unit.value("cat /etc/gridedge/version")

    bundle = job.path()
    with http_server(bundle.parent) as port:
        status, output = install(unit, port, bundle.name)
    assert status == 0, output
    unit.check("reboot")

    for left in ("2", "1", "0"):
        match = unit.expect(
            r"A/B: booting slot (\w) \(virtio 0:\d\), BOOT_A_LEFT=\d BOOT_B_LEFT=(\d)", 240
        )
        assert (match.group(1), match.group(2)) == ("B", left)
    assert unit.expect(r"A/B: booting slot (\w)", 240).group(1) == "A"
    rows = w.stored_rows()  # before slot A's gridedge starts: what it delivers comes after
    unit.wait_for_shell()

    assert unit.value("cat /etc/gridedge/version") == version
    assert "rauc.slot=A" in unit.value("cat /proc/cmdline")
    wait_until_marked_good(unit, 300)
    env = boot_env(unit)
    assert env["BOOT_A_LEFT"] == "3" and env["BOOT_B_LEFT"] == "0"
    wait_until(lambda: w.stored_rows() > rows, 120, "readings from slot A after the rollback",
               interval=2)


def test_bundles_with_bad_signature_or_wrong_compatible_are_refused(
    make_unit: Callable[..., Unit], ci_image: Path, tmp_path: Path
) -> None:
    """A bundle signed by an unknown key, and one for another compatible, are both refused
    and leave the inactive slot and the boot order untouched."""
    rootfs = ci_image / "rootfs.ext4"
    stranger = SigningKeys.make(tmp_path / "stranger-keys")
    bundles = tmp_path / "bundles"
    jobs = [start_bundle(bundles / "unsigned-by-us.raucb", rootfs, stranger, version="evil-1")]
    jobs.append(
        start_bundle(
            bundles / "other-board.raucb",
            rootfs,
            SigningKeys.in_folder(ci_image / "test-keys"),
            version="other-1",
            compatible="gridedge-beaglebone-black",
        )
    )
    unit = make_unit()
    assert unit.boot() == "A"
    wait_until_marked_good(unit, 120)
    before = boot_env(unit)

    for job in jobs:
        job.path()
    with http_server(bundles) as port:
        status, output = install(unit, port, "unsigned-by-us.raucb")
        assert status != 0
        assert "signature" in output.lower() and "failed" in output.lower(), output
        status, output = install(unit, port, "other-board.raucb")
        assert status != 0
        assert "compatible" in output.lower() and "gridedge-beaglebone-black" in output, output

    assert boot_env(unit) == before
    unit.shut_down()
    assert slot_b_digest(unit.disk) == slot_b_digest(ci_image / "disk.img")
