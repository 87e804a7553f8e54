"""The update agent end to end on the host: real bundles signed by Debian's rauc, the real
``rauc info`` and ``zstd``, the real download store on a temporary /data; the BeagleBone's
slots and the cloud's end of the link are stand-ins (tests/support/firmware_kit.py).  Time is
``task.Clock`` (chunk pacing, waits, the reboot window); the tools run on the real reactor."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from gridcloud import bundles
from gridedge.config import EdgeConfig, FirmwareConfig, UplinkConfig
from gridedge.firmware import Agent, DownloadStore, UpdateFailed
from gridedge.firmware.manifest import cms_span
from gridedge.firmware.verity import tree_size
from gridedge.uplink.link import Link, LinkSettings
from gridwire import (
    Ack,
    ChunkRequest,
    CloudSession,
    FirmwareChunk,
    FirmwareState,
    Hello,
    Message,
    ReadingBatch,
    Welcome,
)
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock

from support.firmware_kit import CHUNK, FakeCloud, FakeSlots, Kit, make_kit, offer_of
from support.journal_helpers import open_journal, rec


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_kit(tmp_path_factory.mktemp("fwkit"))


@pytest.fixture(scope="module")
def v2(kit: Kit) -> bytes:
    return kit.bundle("v2", "2.0").read_bytes()


class Unit:
    """One unit's agent, with its slots, its /data and a boot id, across "reboots"."""

    def __init__(self, data: Path, kit: Kit, running: str = "1.0", **settings: object) -> None:
        self.data = data
        self.kit = kit
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.slots = FakeSlots(kit.tools())
        self.boot = "boot-1"
        self.settings = FirmwareConfig(keyring=kit.keys.ca, **settings)  # type: ignore[arg-type]
        self.agent = self._agent(running)

    def _agent(self, running: str) -> Agent:
        return Agent(self.settings, DownloadStore(self.data / "firmware"), self.kit.tools(),
                     self.slots, self.clock, running, boot_id=lambda: self.boot)

    def connect(self, blobs: dict[int, bytes]) -> FakeCloud:
        cloud = FakeCloud(self.clock, blobs)
        cloud.agent = self.agent
        self.agent.attach(cloud)
        return cloud

    def restart(self, running: str, *, rebooted: bool) -> None:
        """gridedge restarts (a new agent on the same /data), after a reboot or not."""
        self.agent.stop()
        if rebooted:
            self.boot += "+"
            if self.slots.installed and running == self.slots.installed[-1][0]:
                self.slots.booted = "B"
                self.slots.good = False  # until mark-good says otherwise
        self.agent = self._agent(running)
        self.agent.start()


async def settle(clock: Clock, done: Callable[[], bool], limit: float = 30.0,
                 step: float = 0.05, agent: Agent | None = None) -> None:
    """Advance the clock in steps, letting the real reactor run tools, until ``done``."""
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("the agent did not get there in time"
                                 + (f": {agent.view()}" if agent is not None else ""))
        clock.advance(step)
        await task.deferLater(reactor, 0.001, lambda: None)


async def idle(clock: Clock, seconds: float) -> None:
    for _ in range(int(seconds / 0.05)):
        clock.advance(0.05)
        await task.deferLater(reactor, 0.0005, lambda: None)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest_twisted.ensureDeferred
async def test_full_bundle_tail_first_verified_installed_then_healthy(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    offer = offer_of(v2, 20, "2.0")
    cloud = unit.connect({20: v2})
    unit.agent.offered(offer)
    await settle(unit.clock, lambda: unit.slots.reboots == 1)

    assert unit.slots.installed == [("2.0", sha(v2))]
    indexes = [r.index for _, r in cloud.requests]
    assert indexes[0] == offer.chunk_count - 1, "the tail (signature size) comes first"
    assert sorted(indexes) == list(range(offer.chunk_count)), "each chunk once"
    first_data = indexes.index(0)
    assert all(i > indexes[first_data - 1] - 2 for i in indexes[:first_data])
    states = cloud.states()
    assert states[0] == "DOWNLOADING" and states[-5:] == [
        "DOWNLOADED", "VERIFYING", "INSTALLING", "INSTALLED", "REBOOTING"]
    progress = [s.received for s in cloud.statuses if s.state == FirmwareState.DOWNLOADING]
    assert progress == sorted(progress) and len(progress) <= 22
    pending = json.loads((tmp_path / "firmware/pending.json").read_text())
    assert pending["version"] == "2.0" and pending["offer_id"] == 20
    assert not (tmp_path / "firmware/download.part").exists()

    # The reboot: the new slot runs 2.0; HEALTHY only once mark-good marked it good.
    unit.restart("2.0", rebooted=True)
    cloud = unit.connect({})
    await idle(unit.clock, 30)
    assert cloud.statuses == []
    unit.slots.good = True
    await settle(unit.clock, lambda: bool(cloud.statuses))
    assert cloud.states() == ["HEALTHY"] and cloud.statuses[0].offer_id == 20
    assert (tmp_path / "firmware/base.raucb").read_bytes() == v2, "the next delta's base"
    assert not (tmp_path / "firmware/pending.json").exists()
    # The cloud missed it and offers again: the outcome is repeated, nothing is fetched.
    cloud = unit.connect({20: v2})
    unit.agent.offered(offer)
    await idle(unit.clock, 2)
    assert cloud.states() == ["HEALTHY"] and cloud.requests == []


@pytest_twisted.ensureDeferred
async def test_tampered_chunk_fetched_again_then_failed_after_three(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    offer = offer_of(v2, 30, "2.0")
    cloud = unit.connect({30: v2})
    bad = {"left": 1}

    def flip(offer_id: int, index: int, data: bytes) -> bytes:
        if index == 3 and bad["left"]:
            bad["left"] -= 1
            return data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]
        return data
    cloud.tamper = flip
    unit.agent.offered(offer)
    await settle(unit.clock, lambda: unit.slots.reboots == 1)
    assert [r.index for _, r in cloud.requests].count(3) == 2
    assert unit.slots.installed == [("2.0", sha(v2))]

    unit2 = Unit(tmp_path / "u2", kit)
    cloud = unit2.connect({30: v2})
    cloud.tamper = lambda o, i, d: d[:-1] + bytes([d[-1] ^ 0x80]) if i == 2 else d
    unit2.agent.offered(offer)
    await settle(unit2.clock, lambda: unit2.agent.phase == "failed")
    assert [r.index for _, r in cloud.requests].count(2) == 4
    assert cloud.states()[-1] == "FAILED"
    assert "chunk 2 failed verification" in cloud.statuses[-1].detail
    assert "3 re-fetches" in cloud.statuses[-1].detail
    assert unit2.slots.installed == [] and unit2.slots.reboots == 0
    assert not (tmp_path / "u2/firmware/download.part").exists()


@pytest.mark.parametrize("case", ["other-key", "compatible"])
@pytest_twisted.ensureDeferred
async def test_bad_signature_or_compatible_rejected_after_the_tail(
        tmp_path: Path, kit: Kit, case: str) -> None:
    if case == "other-key":
        blob = kit.bundle("foreign", "2.0", keys=kit.other_keys).read_bytes()
        reason = "signature verification failed"
    else:
        blob = kit.bundle("wrongcompat", "2.0", compatible="gridedge-beaglebone-black"
                          ).read_bytes()
        reason = "bundle is for 'gridedge-beaglebone-black'; this unit is 'gridedge-qemu-ci'"
    unit = Unit(tmp_path, kit)
    offer = offer_of(blob, 40, "2.0")
    cloud = unit.connect({40: blob})
    unit.agent.offered(offer)
    await settle(unit.clock, lambda: unit.agent.phase == "failed")
    assert cloud.states() == ["DOWNLOADING", "REJECTED"]
    assert reason in cloud.statuses[-1].detail
    assert len(cloud.requests) <= 2, "only the tail was fetched"
    assert unit.slots.installed == [] and unit.slots.reboots == 0
    # Rejected is final: a re-offer on a later connection is answered, not fetched.
    cloud = unit.connect({40: blob})
    unit.agent.offered(offer)
    await idle(unit.clock, 2)
    assert cloud.states() == ["REJECTED"] and cloud.requests == []


@pytest_twisted.ensureDeferred
async def test_resume_after_a_restart_with_a_torn_chunk(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    offer = offer_of(v2, 50, "2.0")
    cloud = unit.connect({50: v2})
    unit.agent.offered(offer)
    await settle(unit.clock, lambda: len(cloud.requests) == 11)
    cloud.answer = False  # the power goes while the 12th chunk is on its way ...
    await settle(unit.clock, lambda: len(cloud.requests) == 12)
    await idle(unit.clock, 0.5)
    first = [r.index for _, r in cloud.requests[:11]]
    done = json.loads((tmp_path / "firmware/download.json").read_text())
    torn = cloud.requests[11][1].index
    part = tmp_path / "firmware/download.part"
    with part.open("r+b") as f:  # ... half written when it went
        f.seek(torn * CHUNK)
        f.write(b"\xa5" * (CHUNK // 2))

    unit.restart("1.0", rebooted=True)
    unit.slots.good = True
    cloud2 = unit.connect({50: v2})
    await idle(unit.clock, 1)
    assert cloud2.requests == [], "no chunk before the offer is repeated on this connection"
    unit.agent.offered(offer)
    await settle(unit.clock, lambda: unit.slots.reboots == 1, agent=unit.agent)
    second = [r.index for _, r in cloud2.requests]
    assert not set(first) & set(second), "stored chunks are not fetched again"
    assert torn in second
    assert sorted(first + second) == list(range(offer.chunk_count))
    assert unit.slots.installed == [("2.0", sha(v2))]
    assert done["offer_id"] == 50


@pytest_twisted.ensureDeferred
async def test_delta_rebuilds_exactly_the_target(tmp_path: Path, kit: Kit, v2: bytes) -> None:
    v3_path = kit.bundle("v3", "3.0", extra=b" with a fix")
    v3 = v3_path.read_bytes()
    base = tmp_path / "v2.raucb"
    base.write_bytes(v2)
    patch = tmp_path / "v2-v3.zst"
    await defer.ensureDeferred(bundles.make_delta(reactor, base, v3_path, patch))
    delta = patch.read_bytes()
    assert len(delta) < len(v3) / 5
    zstd = subprocess.run(["zstd", "-q", "-d", "--long=27", f"--patch-from={base}", "-c"],
                          input=delta, capture_output=True, check=True).stdout
    squashfs = cms_span(len(zstd), zstd[-8:])[0]
    assert zstd == v3[:squashfs] + v3[squashfs + tree_size(squashfs):], \
        "the patch rebuilds the bundle without its hash tree: the unit puts it back"
    full_offer = offer_of(v3, 60, "3.0")
    delta_offer = offer_of(delta, 61, "3.0", base=v2, target=v3)

    unit = Unit(tmp_path / "unit", kit, running="2.0")
    store = DownloadStore(tmp_path / "unit/firmware")
    store.folder.mkdir(parents=True)
    (store.folder / "v2").write_bytes(v2)
    store.keep_installed(store.folder / "v2", "2.0", hashlib.sha256(v2).hexdigest())
    store.promote_installed()
    cloud = unit.connect({60: v3, 61: delta})
    unit.agent.offered(full_offer)
    unit.agent.offered(delta_offer)
    await settle(unit.clock, lambda: unit.slots.reboots == 1)
    assert {r.offer_id for _, r in cloud.requests} == {61}
    assert len(cloud.requests) == delta_offer.chunk_count
    assert unit.slots.installed == [("3.0", sha(v3))]
    assert store.installed.read_bytes() == v3

    # Without the base (a factory unit), the same offers: the full bundle.
    other = Unit(tmp_path / "factory", kit, running="2.0")
    cloud = other.connect({60: v3, 61: delta})
    other.agent.offered(full_offer)
    other.agent.offered(delta_offer)
    await settle(other.clock, lambda: other.slots.reboots == 1)
    assert {r.offer_id for _, r in cloud.requests} == {60}
    assert other.slots.installed == [("3.0", sha(v3))]


@pytest_twisted.ensureDeferred
async def test_a_delta_of_the_old_format_fails_then_the_full_bundle(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    """A patch of the whole bundle, hash tree included (the format before the tree was left
    out), decodes to something that is not ``squashfs || CMS || size``: the rebuild fails
    with the reason, nothing is installed, and the full offer is taken next time."""
    v3_path = kit.bundle("v3", "3.0", extra=b" with a fix")
    v3 = v3_path.read_bytes()
    base = tmp_path / "v2.raucb"
    base.write_bytes(v2)
    old = subprocess.run(["zstd", "-q", "-19", "--long=27", f"--patch-from={base}", "-c",
                          str(v3_path)], capture_output=True, check=True).stdout
    full_offer = offer_of(v3, 62, "3.0")
    delta_offer = offer_of(old, 63, "3.0", base=v2, target=v3)
    unit = Unit(tmp_path / "unit", kit, running="2.0")
    store = DownloadStore(tmp_path / "unit/firmware")
    store.folder.mkdir(parents=True)
    (store.folder / "v2").write_bytes(v2)
    store.keep_installed(store.folder / "v2", "2.0", hashlib.sha256(v2).hexdigest())
    store.promote_installed()
    cloud = unit.connect({62: v3, 63: old})
    unit.agent.offered(full_offer)
    unit.agent.offered(delta_offer)
    await settle(unit.clock, lambda: unit.agent.phase == "failed", agent=unit.agent)
    assert cloud.states()[-1] == "FAILED"
    assert cloud.statuses[-1].offer_id == 63
    assert "delta rebuild failed" in cloud.statuses[-1].detail
    assert unit.slots.installed == [] and not store.rebuilt.exists()

    cloud = unit.connect({62: v3, 63: old})
    unit.agent.offered(full_offer)
    unit.agent.offered(delta_offer)
    await settle(unit.clock, lambda: unit.slots.reboots == 1, agent=unit.agent)
    assert {r.offer_id for _, r in cloud.requests} == {62}
    assert unit.slots.installed == [("3.0", sha(v3))]


@pytest_twisted.ensureDeferred
async def test_readings_first_and_the_rate_cap(tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit, max_chunk_rate=2.0)
    offer = offer_of(v2, 70, "2.0")
    cloud = unit.connect({70: v2})
    cloud.idle = False  # an upload is outstanding
    unit.agent.offered(offer)
    await idle(unit.clock, 10)
    assert cloud.requests == []
    cloud.idle = True
    unit.agent.wake()
    await settle(unit.clock, lambda: len(cloud.requests) >= 8)
    times = [t for t, _ in cloud.requests]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.5 - 1e-9
    cloud.idle = False
    n = len(cloud.requests)
    await idle(unit.clock, 5)
    assert len(cloud.requests) <= n + 1, "at most the request already decided"


@pytest_twisted.ensureDeferred
async def test_running_slot_not_good_waits_without_failing(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    unit.slots.good = False
    cloud = unit.connect({80: v2})
    unit.agent.offered(offer_of(v2, 80, "2.0"))
    await idle(unit.clock, 30)
    assert unit.agent.phase == "waiting" and cloud.requests == [] and cloud.statuses == []
    unit.slots.good = True
    await settle(unit.clock, lambda: unit.slots.reboots == 1, step=0.5)
    assert unit.slots.installed == [("2.0", sha(v2))]


@pytest_twisted.ensureDeferred
async def test_reboot_waits_for_the_window(tmp_path: Path, kit: Kit, v2: bytes) -> None:
    clock_now = time.localtime(1_800_000_000)
    minute = clock_now.tm_hour * 60 + clock_now.tm_min
    start, end = (minute + 60) % 1440, (minute + 120) % 1440
    unit = Unit(tmp_path, kit, reboot="window", window=(start, end))
    cloud = unit.connect({90: v2})
    unit.agent.offered(offer_of(v2, 90, "2.0"))
    await settle(unit.clock, lambda: unit.agent.phase == "window")
    assert unit.slots.installed and unit.slots.reboots == 0
    assert cloud.states()[-1] == "INSTALLED"
    unit.clock.advance(3000)
    assert unit.slots.reboots == 0
    unit.clock.advance(700)
    assert unit.slots.reboots == 1 and cloud.states()[-1] == "REBOOTING"


@pytest_twisted.ensureDeferred
async def test_rolled_back_with_the_reason_mark_good_wrote(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    unit.connect({95: v2})
    unit.agent.offered(offer_of(v2, 95, "2.0"))
    await settle(unit.clock, lambda: unit.slots.reboots == 1)
    reason = "slot B not healthy after 600 s: uplink not running"
    (tmp_path / "firmware/last-failure.txt").write_text(reason + "\n")
    # The new slot never got healthy: the boot loader went back to A, running 1.0.
    unit.restart("1.0", rebooted=True)
    await idle(unit.clock, 1)
    cloud = unit.connect({})
    assert cloud.states() == ["ROLLED_BACK"] and cloud.statuses[0].detail == reason
    assert cloud.statuses[0].offer_id == 95
    assert not (tmp_path / "firmware/installed.raucb").exists()
    assert not (tmp_path / "firmware/base.raucb").exists()


@pytest_twisted.ensureDeferred
async def test_no_room_on_data_fails_before_fetching(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit, min_free_bytes=1 << 50)
    cloud = unit.connect({96: v2})
    unit.agent.offered(offer_of(v2, 96, "2.0"))
    await settle(unit.clock, lambda: bool(cloud.statuses))
    assert cloud.states() == ["FAILED"] and "no room on /data" in cloud.statuses[0].detail
    assert cloud.requests == []


@pytest_twisted.ensureDeferred
async def test_local_bundle_takes_the_same_path(tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    upload = tmp_path / "upload.raucb"
    upload.write_bytes(v2)
    await unit.agent.install_local(upload, hashlib.sha256(v2).hexdigest())
    await settle(unit.clock, lambda: unit.slots.reboots == 1)
    assert unit.slots.installed == [("2.0", sha(v2))]
    assert json.loads((tmp_path / "firmware/pending.json").read_text())["offer_id"] == 0

    foreign = tmp_path / "foreign.raucb"
    foreign.write_bytes(kit.bundle("foreign-local", "2.1", keys=kit.other_keys).read_bytes())
    other = Unit(tmp_path / "u2", kit)
    with pytest.raises(UpdateFailed, match="signature verification failed"):
        await other.agent.install_local(foreign, "0" * 64)
    assert other.slots.installed == [] and other.agent.view()["last_state"] == "REJECTED"


class WireCloud:
    """The cloud end of a real uplink Link, in memory (gridwire's CloudSession): Welcome,
    Acks when told, and chunks of the offers it made."""

    def __init__(self, clock: Clock, blobs: dict[int, bytes]) -> None:
        self.session = CloudSession()
        self.clock = clock
        self.blobs = blobs
        self.got: list[Message] = []
        self.link: Link | None = None

    def from_edge(self, data: bytes) -> None:
        for message in self.session.receive_data(data):
            self.got.append((self.clock.seconds(), message))  # type: ignore[arg-type]
            if isinstance(message, Hello):
                self.to_edge(Welcome(version=self.session.choose_version() or 1,
                                     server_time=0, last_acked_seq=0, heartbeat_interval=300,
                                     max_in_flight=4))
            elif isinstance(message, ChunkRequest):
                data = self.blobs[message.offer_id][message.index * CHUNK:
                                                    (message.index + 1) * CHUNK]
                self.clock.callLater(0.3, self.to_edge, FirmwareChunk(
                    offer_id=message.offer_id, index=message.index, data=data))

    def to_edge(self, message: Message) -> None:
        assert self.link is not None
        self.link.data_received(self.session.send(message))

    def of(self, kind: type[Message]) -> list[tuple[float, Message]]:
        return [(t, m) for t, m in self.got if isinstance(m, kind)]  # type: ignore[misc]


@pytest_twisted.ensureDeferred
async def test_readings_first_over_a_real_uplink_link(tmp_path: Path, kit: Kit,
                                                      v2: bytes) -> None:
    """With gridedge's Link and journal: no ChunkRequest while a reading batch waits for its
    Ack, and readings are never held back by a chunk in flight."""
    unit = Unit(tmp_path, kit)
    journal = open_journal(tmp_path)
    cloud = WireCloud(unit.clock, {100: v2})
    settings = LinkSettings.from_config(
        EdgeConfig(firmware_version="1.0", boot_slot="A"),
        UplinkConfig(host="c", port=1, server_name="c", tls_dir=tmp_path, batch_linger=0.0,
                     upload_deadline=0.0))
    link = Link(journal, settings, unit.clock, cloud.from_edge, lambda: None,
                firmware=unit.agent)
    cloud.link = link
    journal.append([rec(i) for i in range(10)])
    link.connected()
    assert len(cloud.of(ReadingBatch)) == 1 and not link.uploads_idle()
    cloud.to_edge(offer_of(v2, 100, "2.0"))
    await idle(unit.clock, 5)
    assert cloud.of(ChunkRequest) == [], "the batch is not acknowledged yet"
    cloud.to_edge(Ack(up_to_seq=10))
    await settle(unit.clock, lambda: len(cloud.of(ChunkRequest)) == 3)
    journal.append([rec(i) for i in range(10, 15)])  # readings while a chunk is in flight
    assert len(cloud.of(ReadingBatch)) == 2, "a reading batch goes at once"
    asked = len(cloud.of(ChunkRequest))
    await idle(unit.clock, 5)
    assert len(cloud.of(ChunkRequest)) == asked, "no chunk while that batch is unacked"
    cloud.to_edge(Ack(up_to_seq=15))
    await settle(unit.clock, lambda: unit.slots.reboots == 1)
    assert unit.slots.installed == [("2.0", sha(v2))]
    link.connection_lost()


@pytest_twisted.ensureDeferred
async def test_restart_before_the_reboot_reboots_in_the_window(
        tmp_path: Path, kit: Kit, v2: bytes) -> None:
    """gridedge restarted after the install but before the reboot (same boot): it does not
    judge a boot that has not happened; it reboots, as [firmware] reboot says."""
    clock_now = time.localtime(1_800_000_000)
    minute = clock_now.tm_hour * 60 + clock_now.tm_min
    unit = Unit(tmp_path, kit, reboot="window", window=((minute + 30) % 1440,
                                                        (minute + 90) % 1440))
    unit.connect({97: v2})
    unit.agent.offered(offer_of(v2, 97, "2.0"))
    await settle(unit.clock, lambda: unit.agent.phase == "window")
    unit.restart("1.0", rebooted=False)
    cloud = unit.connect({})
    await idle(unit.clock, 2)
    assert unit.agent.phase == "window" and unit.slots.reboots == 0 and cloud.statuses == []
    unit.clock.advance(1800)
    assert unit.slots.reboots == 1 and cloud.states() == ["REBOOTING"]


@pytest_twisted.ensureDeferred
async def test_rauc_install_failing_is_reported(tmp_path: Path, kit: Kit, v2: bytes) -> None:
    unit = Unit(tmp_path, kit)
    unit.slots.fail_install = "Failed to write slot rootfs.1: No space left on device"
    cloud = unit.connect({98: v2})
    unit.agent.offered(offer_of(v2, 98, "2.0"))
    await settle(unit.clock, lambda: unit.agent.phase == "failed")
    assert cloud.states()[-2:] == ["INSTALLING", "FAILED"]
    assert cloud.statuses[-1].detail == ("rauc install: Failed to write slot rootfs.1: No space "
                                         "left on device")
    assert unit.slots.reboots == 0 and not (tmp_path / "firmware/pending.json").exists()
    upload = tmp_path / "upload.raucb"
    upload.write_bytes(v2)
    with pytest.raises(UpdateFailed, match="No space left"):
        await unit.agent.install_local(upload, hashlib.sha256(v2).hexdigest())
    assert unit.agent.phase == "failed"
