"""Fixtures of the QEMU boot tests: the CI image, a unit booting a copy of it, and the world
around the unit (gridsim on a pty for its radio, gridcloud on the host's loopback, a fresh
PostgreSQL database), all real processes started the way tests/system starts them.

The image comes from 'make ci-image' (output/ci-image); 'make qemu-test' and 'make test' build
it first. Without it these tests fail with that instruction rather than skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import edge_harness
from support.qemu_unit import Unit, copy_disk
from support.qemu_world import GUEST_WEB_PORT, World

IMAGE = Path(__file__).resolve().parents[2] / "output" / "ci-image"


@pytest.fixture(scope="session")
def ci_image() -> Path:
    """output/ci-image, checked to hold a built image."""
    for name in ("disk.img", "rootfs.ext4", "test-keys/signing.key.pem"):
        if not (IMAGE / name).exists():
            pytest.fail(f"{IMAGE / name} is missing: run 'make ci-image' (or 'make qemu-test')")
    return IMAGE


@pytest.fixture
def make_unit(ci_image: Path, tmp_path: Path) -> Iterator[Callable[..., Unit]]:
    """Units booting private copies of the CI image; all are stopped after the test."""
    units: list[Unit] = []

    def make(radio: Path | None = None) -> Unit:
        disk = copy_disk(ci_image / "disk.img", tmp_path / f"disk{len(units)}.img")
        # The local web page's port, reachable from the host's loopback (and nowhere else).
        forwards = ((edge_harness.free_port(), GUEST_WEB_PORT),)
        unit = Unit(disk, tmp_path / f"console{len(units)}.log", radio=radio,
                    forwards=forwards)
        units.append(unit)
        return unit

    yield make
    for unit in units:
        unit.shut_down()


@pytest.fixture
def world(tmp_path: Path, pg_dsn: str) -> Iterator[Callable[..., World]]:
    """Start the world around a unit: make(meters=, speed=, duration=) -> World."""
    started: list[World] = []

    def make(*, meters: int = 8, speed: float = 300.0, duration: str = "1d") -> World:
        root = tmp_path / "world"
        root.mkdir()
        pki = edge_harness.make_pki(root, root / "edge-data")
        cloud = edge_harness.Cloud(root, pki, pg_dsn).start()
        sim = edge_harness.Sim(root, root / "radio", meters=meters, speed=speed, duration=duration)
        w = World(root, pki, cloud, sim, pg_dsn)
        started.append(w)
        sim.start()
        return w

    yield make
    for w in started:
        w.sim.proc.stop(10)
        w.cloud.proc.stop(20)
