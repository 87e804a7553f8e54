"""Over-the-air updates end to end: a unit booting the CI image in QEMU behind a
fault-injection proxy, the cloud on the host (``gridcloud serve`` and ``gridcloud api`` with a
``[releases]`` section), and an operator who uploads releases and makes rollouts through the
HTTP API.

Releases are the CI image's own root with a new version, changed with debugfs and signed
with the image's test key (or a stranger's). This boot covers what a unit must refuse; the
rollout that installs, reboots and rolls back through link and power cuts is issue 15's
remaining work (docs/updates.md, "What is tested").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gridcloud.pki import PKIDirectory

from support import edge_harness
from support.qemu_bundle import SigningKeys
from support.qemu_ota import (
    OtaCloud,
    OtaUnit,
    make_ota_unit,
    make_release,
    sha256_file,
)
from support.qemu_unit import boot_env, partition_digest
from support.qemu_world import wait_until_marked_good

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU_CI = "gridedge-qemu-ci"
BEAGLEBONE = "gridedge-beaglebone-black"
#: Terminal states of a unit in a rollout.
DONE = {"healthy", "failed", "rolled_back", "cancelled"}


@pytest.fixture
def make_cloud(tmp_path: Path, pg_dsn: str, ci_image: Path) -> Iterator[Callable[..., OtaCloud]]:
    """make(trust=(extra CA files), compatible=(...), deltas_from=N) -> the operator's cloud,
    started."""
    clouds: list[OtaCloud] = []

    def make(*, trust: tuple[Path, ...] = (), compatible: tuple[str, ...] = (QEMU_CI,),
             deltas_from: int = 3) -> OtaCloud:
        root = tmp_path / "cloud"
        root.mkdir()
        pki = PKIDirectory(root / "pki")
        pki.init()
        pki.server([edge_harness.SERVER_NAME])
        keyring = root / "rauc-keyring.pem"
        cas = (ci_image / "test-keys" / "ca.cert.pem", *trust)
        keyring.write_text("".join(ca.read_text() for ca in cas))
        cloud = OtaCloud(root, edge_harness.Pki(pki.path, root), pg_dsn, keyring, compatible,
                         deltas_from)
        clouds.append(cloud)
        return cloud.start()

    yield make
    for cloud in clouds:
        cloud.stop()


@pytest.fixture
def make_unit(tmp_path: Path, ci_image: Path) -> Iterator[Callable[[OtaCloud, str], OtaUnit]]:
    """make(cloud, edge_id) -> a factory-fresh unit with its radio and its link's proxy."""
    units: list[OtaUnit] = []

    def make(cloud: OtaCloud, edge_id: str) -> OtaUnit:
        unit = make_ota_unit(tmp_path / "units", ci_image, cloud.pki.dir, edge_id, cloud.port,
                             seed=len(units) + 1)
        units.append(unit)
        return unit

    yield make
    for u in units:
        u.unit.shut_down()
        u.proxy.close()
        u.sim.proc.stop(10)


def boot_and_provision(*units: OtaUnit) -> None:
    """Boot factory units and provision them; their slot A is marked good (a unit fetches
    nothing before that)."""
    for u in units:
        assert u.unit.boot() == "A"
        u.provision()
    for u in units:
        wait_until_marked_good(u.unit, 300)


@pytest.mark.timeout(1200)
def test_tampered_foreign_and_wrong_board_releases_are_refused_and_the_unit_says_why(
    make_cloud: Callable[..., OtaCloud],
    make_unit: Callable[[OtaCloud, str], OtaUnit],
    ci_image: Path,
    tmp_path: Path,
) -> None:
    """A cloud that trusts a second signer and serves two boards offers a unit three releases
    it must refuse: one whose stored bundle was corrupted after upload (a chunk that does not
    match the signed hashes), one signed by a key the unit does not trust, one for another
    board. Each is refused with its reason on the rollout, the unit stays on slot A with its
    boot order, and its inactive slot is never written."""
    stranger = SigningKeys.make(tmp_path / "stranger-keys")
    releases = tmp_path / "releases"
    tampered = make_release(ci_image, releases, "ota-2.0.0-tampered")
    foreign = make_release(ci_image, releases, "ota-2.0.0-foreign", keys=stranger)
    other_board = make_release(ci_image, releases, "ota-2.0.0-bbb", compatible=BEAGLEBONE)
    # No deltas: the unit is a factory unit (full offers only), and zstd would take a core.
    cloud = make_cloud(trust=(stranger.ca,), compatible=(QEMU_CI, BEAGLEBONE), deltas_from=0)
    one = make_unit(cloud, "edge-ota-1")
    units = (one.unit,)
    boot_and_provision(one)
    cloud.wait_for_edges([one.edge_id], 300, units)
    env = boot_env(one.unit)

    cases = (
        (tampered, ("failed verification",)),  # the block's hash is not the signed tree's
        (foreign, ("signature", "certificate")),  # rauc's reason
        (other_board, (BEAGLEBONE,)),
    )
    for release, reasons in cases:
        uploaded = cloud.upload(release.bundle)
        if release is tampered:
            corrupt_stored_bundle(cloud.root / "releases", uploaded["sha256"])
        rollout = cloud.roll_out(uploaded["id"], [one.edge_id])
        row = cloud.wait_for_unit(rollout["id"], one.edge_id, DONE, 900, units)
        assert row["state"] == "failed", row
        assert any(word in row["detail"] for word in reasons), row
        assert cloud.rollout(rollout["id"])["state"] == "paused"

    assert "rauc.slot=A" in one.unit.value("cat /proc/cmdline")
    assert boot_env(one.unit) == env
    one.unit.shut_down()
    assert partition_digest(one.unit.disk, 3) == partition_digest(ci_image / "disk.img", 3)


def corrupt_stored_bundle(folder: Path, sha256: str) -> None:
    """Flip one byte inside the fourth chunk of the bundle the cloud stored (the SquashFS, so
    the signature still verifies and only the block's hash gives it away)."""
    inodes = {p.stat().st_ino: p for p in folder.rglob("*") if p.is_file()}
    stored = [p for p in inodes.values() if sha256_file(p) == sha256]
    assert len(stored) == 1, f"the bundle {sha256} is not (once) in {folder}"
    with stored[0].open("r+b") as f:
        f.seek(3 * 32768 + 1000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert sha256_file(stored[0]) != sha256
