"""Over-the-air updates end to end: two units booting the CI image in QEMU, each behind its
own fault-injection proxy, the cloud on the host (``gridcloud serve`` and ``gridcloud api``
with a ``[releases]`` section), and an operator who uploads releases and makes rollouts
through the HTTP API.

Releases are the CI image's own root with a new version (and, for the broken one, a gridedge
that never gets healthy), changed with debugfs and signed with the image's test key (or a
stranger's). A factory unit runs the image and has no delta base, so its first update is the
full bundle; it then keeps that bundle, and the next release reaches it as a delta.

Each boot costs about a minute of emulation, so one fleet is followed through issue 15's
scenarios in the order they would happen to it in the field, on shared boots: what a unit
must refuse, a rollout in waves through link and power cuts, a broken release that rolls
back. The updates by hand (``rauc install`` on the console, as docs/updates.md tells a
technician to recover a unit) are checked on the same boots, and the A/B boot counter along
the way. The test is marked ``fleet``: ``make test`` runs it in a pytest session of its own,
beside the rest of the suite (tools/suite.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gridcloud.pki import PKIDirectory

from support import edge_harness
from support.qemu_bundle import SigningKeys, http_server
from support.qemu_ota import (
    OtaCloud,
    OtaUnit,
    broken_gridedge_files,
    make_ota_unit,
    make_release,
    sha256_file,
    wait,
)
from support.qemu_unit import Unit, boot_env, partition_digest
from support.qemu_world import wait_until_marked_good

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.fleet]

QEMU_CI = "gridedge-qemu-ci"
BEAGLEBONE = "gridedge-beaglebone-black"
#: The link is cut this often while a unit downloads (a 2G link that keeps dropping), this
#: many times at most (each costs a reconnection: TLS on an emulated ARM takes seconds).
CUT_EVERY = 12.0
MAX_CUTS = 6
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


def install_by_hand(unit: Unit, bundle: Path) -> tuple[int, str]:
    """Fetch ``bundle`` from the host and ``rauc install`` it on the console, as a technician
    recovers a unit by hand (docs/updates.md): (exit status, output)."""
    with http_server(bundle.parent) as port:
        unit.check(f"wget -q -O /tmp/{bundle.name} http://10.0.2.2:{port}/{bundle.name}",
                   timeout=180)
    status, output = unit.run(f"rauc install /tmp/{bundle.name} 2>&1", timeout=300)
    unit.check(f"rm /tmp/{bundle.name}")
    return status, output


def readings_grow(dsn: str, u: OtaUnit, what: str, units: tuple[Unit, ...]) -> None:
    """Wait until the cloud stores new readings of ``u`` (its radio keeps reporting)."""
    before = edge_harness.stored(dsn, u.edge_id).rows
    wait(f"new readings of {u.edge_id} {what}",
         lambda: edge_harness.stored(dsn, u.edge_id).rows > before, 180, units)


# About 18 minutes on a 2-core machine: ten boots, two full downloads, three installs.
@pytest.mark.timeout(3600)
def test_a_fleet_refuses_bad_releases_takes_v2_in_waves_through_cuts_and_rolls_back_v3(
    make_cloud: Callable[..., OtaCloud],
    make_unit: Callable[[OtaCloud, str], OtaUnit],
    ci_image: Path,
    tmp_path: Path,
    pg_dsn: str,
) -> None:
    """Two factory units on v1 and one cloud that trusts a second signer and serves two
    boards:

    1. Releases unit 1 must refuse, each in a rollout of its own: a bundle corrupted in the
       cloud's store after upload (a chunk that does not match the signed hashes), one
       signed by a key the unit does not trust, one for another board. Each is refused with
       its reason on the rollout, which pauses. ``rauc install`` by hand refuses the last two
       as well; the unit stays on slot A with its boot order.
    2. v2 in one rollout, waves of one. Unit 1 downloads the full bundle (a factory unit has
       no delta base) while its link is cut every few seconds; it loses power during the
       download (slot B is untouched by everything so far; the download resumes where it
       was) and during the install (it boots the old slot with its boot order and installs
       again); then it boots v2 on slot B, which is marked good only after health, and
       reports healthy; its readings flow from slot B. Unit 2's wave starts only then, and
       the rollout completes when unit 2 is healthy on v2 too.
    3. v3, broken (gridedge never healthy), reaches unit 1 as a delta from v2 that rebuilds
       exactly the signed bundle. Slot A is booted until its attempts are used up, then the
       unit comes back on v2 (slot B) by itself; the cloud shows the rollback with the
       unit's reason and the rollout pauses before unit 2's wave. Slot A then holds v3's
       image byte for byte.
    """
    stranger = SigningKeys.make(tmp_path / "stranger-keys")
    releases = tmp_path / "releases"
    # Signed in the background while the units boot, uploaded in this order: with
    # deltas_from = 1 the cloud makes v3's delta from v2 (and two useless small ones before).
    tampered = make_release(ci_image, releases, "ota-1.9.0-tampered")
    foreign = make_release(ci_image, releases, "ota-1.9.0-foreign", keys=stranger)
    other_board = make_release(ci_image, releases, "ota-1.9.0-bbb", compatible=BEAGLEBONE)
    v2 = make_release(ci_image, releases, "ota-2.0.0")
    v3 = make_release(ci_image, releases, "ota-3.0.0-broken", extra=broken_gridedge_files(ci_image))
    cloud = make_cloud(trust=(stranger.ca,), compatible=(QEMU_CI, BEAGLEBONE), deltas_from=1)
    one, two = make_unit(cloud, "edge-ota-1"), make_unit(cloud, "edge-ota-2")
    units = (one.unit, two.unit)  # both, in either role
    boot_and_provision(one, two)
    cloud.wait_for_edges([one.edge_id, two.edge_id], 300, units)
    factory_slot_b = partition_digest(ci_image / "disk.img", 3)

    # 1. What a unit must refuse.
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
        refused = cloud.roll_out(uploaded["id"], [one.edge_id])
        row = cloud.wait_for_unit(refused["id"], one.edge_id, DONE, 900, units)
        assert row["state"] == "failed", row
        assert any(word in row["detail"] for word in reasons), row
        assert cloud.rollout(refused["id"])["state"] == "paused"
    status, output = install_by_hand(one.unit, foreign.bundle)
    assert status != 0 and "signature" in output.lower() and "failed" in output.lower(), output
    status, output = install_by_hand(one.unit, other_board.bundle)
    assert status != 0 and "compatible" in output.lower() and BEAGLEBONE in output, output
    assert "rauc.slot=A" in one.unit.value("cat /proc/cmdline")
    assert boot_env(one.unit) == env

    # 2. v2 in waves of one.
    release = cloud.upload(v2.bundle)
    assert (release["version"], release["compatible"]) == (v2.version, QEMU_CI)
    assert release["size"] == v2.bundle.stat().st_size
    assert release["sha256"] == sha256_file(v2.bundle)
    rollout = cloud.roll_out(release["id"], [one.edge_id, two.edge_id], wave_size=1)
    assert rollout["state"] == "running"
    r = rollout["id"]
    # The cloud orders the waves (by a hash of the edge id): "one" is whichever came first.
    waves = {u["edge_id"]: u["wave"] for u in cloud.rollout(r)["units"]}
    assert sorted(waves.values()) == [0, 1], waves
    if waves[one.edge_id] == 1:
        one, two = two, one

    # Unit 1: the full bundle over a link cut every 12 s.
    link = CuttingLink(cloud, r, one)
    wait("unit 1 to download 45% of v2 through the cuts", lambda: link.downloaded(0.45), 900,
         units)
    assert one.proxy.stats.cuts >= 3, one.proxy.stats
    assert cloud.unit(r, two.edge_id)["state"] == "pending"
    assert "download.json" not in two.firmware_files()

    # Power cut during the download: nothing reached slot B (nor did anything of step 1),
    # and the download resumes.
    before = link.last
    one.unit.power_cut()
    assert partition_digest(one.unit.disk, 3) == factory_slot_b
    assert one.unit.boot() == "A"
    wait("unit 1's first download status after the power cut",
         lambda: link.downloaded(0.0) and link.last["updated_at"] > before["updated_at"], 600,
         units)
    assert link.last["received"] >= before["received"], (
        f"the download restarted: {before} before the power cut, {link.last} after")

    # Power cut during the install: the old slot boots, the unit installs again.
    wait("unit 1 to install v2", lambda: link.reached("installing"), 900, units)
    one.unit.power_cut()
    assert one.unit.boot() == "A"
    assert boot_env(one.unit)["BOOT_ORDER"] == "A B", "the interrupted install changed the order"
    assert cloud.unit(r, two.edge_id)["state"] == "pending"

    # v2 on slot B: on trial (one attempt used) until health marks it good.
    assert one.unit.expect(r"A/B: booting slot (\w)", 900).group(1) == "B"
    one.unit.wait_for_shell()
    assert one.unit.value("cat /etc/gridedge/version") == v2.version
    assert "rauc.slot=B" in one.unit.value("cat /proc/cmdline")
    assert boot_env(one.unit)["BOOT_B_LEFT"] == "2"
    wait_until_marked_good(one.unit, 300)
    assert boot_env(one.unit) == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    status_text = one.unit.check("rauc status --detailed")
    assert re.search(r"\[rootfs\.1\] \(/dev/vda3, ext4, booted\)\s+bootname: B\s+mounted: /\s+"
                     r"boot status: good", status_text), status_text
    row = cloud.wait_for_unit(r, one.edge_id, {"healthy"}, 300, units)
    assert cloud.edge(one.edge_id)["firmware_version"] == v2.version
    # Resumed, not restarted: the bytes the cloud sent unit 1 are about one bundle.
    assert one.proxy.stats.bytes_down < 1.25 * row["size"], one.proxy.stats
    readings_grow(pg_dsn, one, "from slot B", units)

    # Unit 2's wave starts only now; the rollout completes with it.
    cloud.wait_for_unit(r, two.edge_id, {"rebooting"}, 900, units, or_halted=two.unit)
    assert two.unit.expect(r"A/B: booting slot (\w)", 300).group(1) == "B"
    two.unit.wait_for_shell()
    cloud.wait_for_unit(r, two.edge_id, {"healthy"}, 400, units)
    wait("rollout 1 to complete", lambda: cloud.rollout(r)["state"] == "completed", 60, units)

    # 3. v3, broken, comes to unit 1 as a delta from v2.
    release3 = cloud.upload(v3.bundle)
    delta = cloud.wait_for_delta(release3["id"], v2.version, 600, units)
    assert delta["size"] < 0.05 * release3["size"], delta
    rollout3 = cloud.roll_out(release3["id"], [one.edge_id, two.edge_id], wave_size=1)
    r3 = rollout3["id"]
    waves = {u["edge_id"]: u["wave"] for u in cloud.rollout(r3)["units"]}
    assert waves == {one.edge_id: 0, two.edge_id: 1}, waves  # same hash, same order
    row = cloud.wait_for_unit(r3, one.edge_id, {"rebooting"}, 600, units, or_halted=one.unit)
    assert row["size"] == delta["size"], f"not the delta: {row}"

    for left in ("2", "1", "0"):
        match = one.unit.expect(
            r"A/B: booting slot (\w) \(virtio 0:\d\), BOOT_A_LEFT=(\d) BOOT_B_LEFT=\d", 300)
        assert (match.group(1), match.group(2)) == ("A", left)
    assert one.unit.expect(r"A/B: booting slot (\w)", 300).group(1) == "B"
    one.unit.wait_for_shell()
    assert one.unit.value("cat /etc/gridedge/version") == v2.version
    assert "rauc.slot=B" in one.unit.value("cat /proc/cmdline")
    wait_until_marked_good(one.unit, 300)
    env = boot_env(one.unit)
    assert env["BOOT_B_LEFT"] == "3" and env["BOOT_A_LEFT"] == "0", env
    readings_grow(pg_dsn, one, "from slot B after the rollback", units)

    row = cloud.wait_for_unit(r3, one.edge_id, {"rolled_back"}, 300, units)
    assert "not healthy" in row["detail"], row
    state = cloud.rollout(r3)
    assert state["state"] == "paused" and state.get("paused_reason"), state
    assert cloud.unit(r3, two.edge_id)["state"] == "pending"
    assert two.unit.value("cat /etc/gridedge/version") == v2.version
    assert "download.json" not in two.firmware_files()

    # The delta rebuilt v3's bundle exactly (the unit checks its sha256) and RAUC wrote it.
    one.unit.shut_down()
    size = v3.rootfs.stat().st_size
    assert partition_digest(one.unit.disk, 2, size) == sha256_file(v3.rootfs)


class CuttingLink:
    """Follows one unit's row in a rollout and cuts the unit's link every CUT_EVERY seconds
    while it downloads."""

    def __init__(self, cloud: OtaCloud, rollout: int, unit: OtaUnit) -> None:
        self.cloud, self.rollout, self.unit = cloud, rollout, unit
        self.last: dict[str, Any] = {}
        self.cut_at = time.monotonic()

    def reached(self, state: str) -> bool:
        """Has the unit reached ``state``? Cuts the link when it is time to."""
        self.last = self.cloud.unit(self.rollout, self.unit.edge_id)
        assert self.last["state"] not in DONE, self.last
        if self.last["state"] == "downloading" and time.monotonic() - self.cut_at > CUT_EVERY \
                and self.unit.proxy.stats.cuts < MAX_CUTS:
            self.cut_at = time.monotonic()
            self.unit.proxy.cut()
        return bool(self.last["state"] == state)

    def downloaded(self, share: float) -> bool:
        """Is the unit downloading, with at least ``share`` of the offer received?"""
        return self.reached("downloading") and self.last["received"] >= share * self.last["size"]


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
