"""Firmware over real gridwire and mutual TLS (gridcloud.firmware in a real CloudService, the
releases uploaded through a real ``gridcloud api``): offers on connect (the full bundle, and
the delta whose base is the version the unit runs), chunks byte for byte, the same offers
again after a reconnect, statuses reaching the API, HEALTHY believed only from the target
version, unknown offers ignored, and the rollout gauge."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from gridedge import loadgen
from gridwire import ChunkRequest, FirmwareOffer, FirmwareState
from prometheus_client import generate_latest

from support import release_bundles as rb
from support.cloud_harness import CloudPKI, LogCapture, query, sleep, wait_until
from support.ota_harness import Ota, disconnect, ota_world, reactor, status, unit_state


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bundles")
    signing = rb.keys(folder / "keys")
    return {"keys": signing, "v1": rb.bundle(folder, signing, "1.0.0"),
            "v2": rb.bundle(folder, signing, "1.1.0")}


@pytest_twisted.async_yield_fixture
async def ota(cloud_pki: CloudPKI, pg_dsn: str, tmp_path: Path, kit: dict[str, Any]
              ) -> AsyncIterator[Ota]:
    async for world in ota_world(cloud_pki, pg_dsn, tmp_path, kit["keys"]):
        yield world


async def fetch(client: loadgen.EdgeClient, offer: FirmwareOffer, first: int = 0,
                last: int | None = None) -> bytes:
    """Chunks first..last (all by default) of ``offer``, one request at a time."""
    end = offer.chunk_count if last is None else last + 1
    data = []
    for index in range(first, end):
        client.send(ChunkRequest(offer_id=offer.offer_id, index=index))
        await wait_until(reactor(), lambda i=index: any(
            c.offer_id == offer.offer_id and c.index == i for c in client.chunks),
            f"chunk {index}")
        chunk = next(c for c in client.chunks if c.offer_id == offer.offer_id and
                     c.index == index)
        data.append(chunk.data)
    return b"".join(data)


@pytest_twisted.ensureDeferred
async def test_offers_on_connect_full_and_delta_and_already_current(
        ota: Ota, kit: dict[str, Any]) -> None:
    """A unit on 1.0.0 is offered 1.1.0 as 2R (the bundle) and 2R+1 (the delta from 1.0.0,
    with the base's and the target's hashes); one on 0.9 only the bundle; one already on
    1.1.0 is healthy at once and offered nothing."""
    v1, v2 = ota.upload(kit["v1"]), ota.upload(kit["v2"])
    v2 = ota.deltas_ready(v2["id"])
    [delta] = v2["deltas"]
    assert delta["state"] == "ready" and delta["base_version"] == "1.0.0"
    units = {name: await ota.unit(name, fw)
             for name, fw in (("u-on-1", "1.0.0"), ("u-on-09", "0.9"), ("u-current", "1.1.0"))}
    for client in units.values():
        await disconnect(client)
    rollout = ota.rollout(v2["id"], {"edges": list(units)}, wave_size=3)

    on1 = await ota.unit("u-on-1", "1.0.0")
    await wait_until(reactor(), lambda: len(on1.offers) == 2, "two offers")
    full, patch = sorted(on1.offers, key=lambda o: o.offer_id)
    unit_id = query(ota.dsn, "SELECT id FROM rollout_units WHERE edge_id = 'u-on-1'")[0][0]
    assert (full.offer_id, patch.offer_id) == (2 * unit_id, 2 * unit_id + 1)
    assert not full.is_delta and full.version == "1.1.0" and full.chunk_size == 32768
    assert (full.size, full.sha256.hex()) == (v2["size"], v2["sha256"])
    assert patch.is_delta and patch.version == "1.1.0"
    assert (patch.size, patch.sha256.hex()) == (delta["size"], delta["sha256"])
    assert patch.delta_base is not None and patch.delta_base.hex() == v1["sha256"]
    assert patch.target_sha256 is not None and patch.target_sha256.hex() == v2["sha256"]
    assert patch.target_size == v2["size"]

    on09 = await ota.unit("u-on-09", "0.9")
    await wait_until(reactor(), lambda: len(on09.offers) == 1, "the full offer")
    assert not on09.offers[0].is_delta

    current = await ota.unit("u-current", "1.1.0")
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "u-current") == "healthy",
                     "the current unit healthy")
    assert current.offers == []
    states = {e: u["state"] for e, u in ota.units(rollout["id"]).items()}
    assert states == {"u-on-1": "offered", "u-on-09": "offered", "u-current": "healthy"}
    for client in (on1, on09, current):
        await disconnect(client)


@pytest_twisted.ensureDeferred
async def test_chunks_are_byte_exact_and_offers_come_again_after_a_reconnect(
        ota: Ota, kit: dict[str, Any]) -> None:
    """Half the bundle, a cut, the same offer again on the next connection, the rest: the
    chunks put together are the bundle; the delta's chunks are the delta file; DOWNLOADING
    statuses show the bytes on the API, at most one write per unit and progress interval."""
    ota.upload(kit["v1"])
    v2 = ota.deltas_ready(ota.upload(kit["v2"])["id"])
    await disconnect(await ota.unit("u1", "1.0.0"))
    rollout = ota.rollout(v2["id"], {"edges": ["u1"]})
    client = await ota.unit("u1", "1.0.0")
    await wait_until(reactor(), lambda: len(client.offers) == 2, "the offers")
    full = next(o for o in client.offers if not o.is_delta)
    patch = next(o for o in client.offers if o.is_delta)
    assert full.chunk_count >= 4
    half = full.chunk_count // 2
    first = await fetch(client, full, 0, half - 1)
    client.send(status(full, FirmwareState.DOWNLOADING, len(first)))
    await wait_until(reactor(), lambda: ota.units(rollout["id"])["u1"]["received"] == len(first),
                     "the bytes so far on the API")
    unit = ota.units(rollout["id"])["u1"]
    assert unit["state"] == "downloading" and unit["size"] == v2["size"]
    await disconnect(client)

    again = await ota.unit("u1", "1.0.0")
    await wait_until(reactor(), lambda: len(again.offers) == 2, "the offers again")
    assert sorted(again.offers, key=lambda o: o.offer_id) == sorted(
        client.offers, key=lambda o: o.offer_id)
    rest = await fetch(again, full, half)
    bundle = kit["v2"].read_bytes()
    assert first + rest == bundle
    assert hashlib.sha256(first + rest).hexdigest() == v2["sha256"]
    delta_bytes = await fetch(again, patch)
    stored = next(ota.folder.glob("deltas/*.zst")).read_bytes()
    assert delta_bytes == stored and len(delta_bytes) == patch.size
    # Within the progress interval of the last write (also across the reconnect): held back,
    # and dropped when the next state comes first; DOWNLOADED shows every byte received.
    again.send(status(full, FirmwareState.DOWNLOADING, len(bundle) - 1))
    await sleep(reactor(), 0.5)
    assert ota.units(rollout["id"])["u1"]["received"] == len(first)
    again.send(status(full, FirmwareState.DOWNLOADED, len(bundle)))
    again.send(status(full, FirmwareState.VERIFYING, len(bundle)))
    again.send(status(full, FirmwareState.INSTALLING, len(bundle)))
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "u1") == "installing", "installing")
    assert ota.units(rollout["id"])["u1"]["received"] == len(bundle)
    await disconnect(again)


@pytest_twisted.ensureDeferred
async def test_healthy_counts_only_on_the_target_version_and_strangers_are_ignored(
        ota: Ota, kit: dict[str, Any], logs: LogCapture) -> None:
    """HEALTHY from a connection whose Hello names the old version is logged and not
    counted; after a reboot into 1.1.0 it is (also in a rollout cancelled meanwhile: the
    unit's end is shown as it is).  A status for another edge's unit, a chunk of an offer
    cancelled meanwhile: ignored with a log line."""
    v2 = ota.upload(kit["v2"])
    for name in ("u1", "u2"):
        await disconnect(await ota.unit(name, "1.0.0"))
    rollout = ota.rollout(v2["id"], {"edges": ["u1", "u2"]}, wave_size=2)
    client = await ota.unit("u1", "1.0.0")
    await wait_until(reactor(), lambda: len(client.offers) == 1, "the offer")
    offer = client.offers[0]
    client.send(status(offer, FirmwareState.REBOOTING))
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "u1") == "rebooting", "rebooting")
    client.send(status(offer, FirmwareState.HEALTHY))
    await logs.wait_for(reactor(), "says healthy on 1.1.0 but its Hello named 1.0.0")
    assert unit_state(ota.dsn, "u1") == "rebooting"

    u2_unit = query(ota.dsn, "SELECT id FROM rollout_units WHERE edge_id = 'u2'")[0][0]
    client.send(status(2 * u2_unit, FirmwareState.FAILED, detail="not mine"))
    await logs.wait_for(reactor(), "ignored (not its unit")
    assert unit_state(ota.dsn, "u2") == "pending"  # it never connected since

    # A chunk of an offer whose rollout was cancelled meanwhile is not served.
    u2 = await ota.unit("u2", "1.0.0")
    await wait_until(reactor(), lambda: len(u2.offers) == 1, "u2's offer")
    assert ota.call("POST", f"/v1/rollouts/{rollout['id']}/cancel").status_code == 200
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "u2") == "cancelled", "cancelled")
    await sleep(reactor(), 0.5)  # the NOTIFY reaches this node
    u2.send(ChunkRequest(offer_id=u2.offers[0].offer_id, index=0))
    await logs.wait_for(reactor(), "not served (not offered now)")
    assert u2.chunks == []
    await disconnect(u2)
    await disconnect(client)

    rebooted = await ota.unit("u1", "1.1.0")
    rebooted.send(status(offer, FirmwareState.HEALTHY, detail="slot B marked good"))
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "u1") == "healthy", "healthy")
    assert ota.units(rollout["id"])["u1"]["detail"] == "slot B marked good"
    await disconnect(rebooted)


@pytest_twisted.ensureDeferred
async def test_rollout_unit_gauge(ota: Ota, kit: dict[str, Any]) -> None:
    """``gridcloud_rollout_units{state=...}`` counts every unit by state after a refresh."""
    v2 = ota.upload(kit["v2"])
    for name in ("g1", "g2"):
        await disconnect(await ota.unit(name, "1.0.0"))
    ota.rollout(v2["id"], {"edges": ["g1", "g2"]}, wave_size=1)
    await ota.cloud.firmware.refresh_counts()
    text = generate_latest(ota.cloud.metrics.registry).decode()
    assert 'gridcloud_rollout_units{state="pending"} 2.0' in text
    assert 'gridcloud_rollout_units{state="healthy"} 0.0' in text
    assert "gridcloud_firmware_chunks_sent 0.0" in text


@pytest_twisted.ensureDeferred
async def test_progress_held_back_is_written_when_the_interval_is_over(
        ota: Ota, kit: dict[str, Any]) -> None:
    """Three DOWNLOADING statuses in quick succession: the first is written at once, the
    last one when the progress interval is over, the middle one never."""
    ota.cloud.firmware.progress_interval = 1.0
    v2 = ota.upload(kit["v2"])
    await disconnect(await ota.unit("u1", "1.0.0"))
    rollout = ota.rollout(v2["id"], {"edges": ["u1"]})
    client = await ota.unit("u1", "1.0.0")
    await wait_until(reactor(), lambda: client.offers, "the offer")
    received = lambda: ota.units(rollout["id"])["u1"]["received"]  # noqa: E731
    started = reactor().seconds()
    for n in (100, 200, 300):
        client.send(status(client.offers[0], FirmwareState.DOWNLOADING, n))
    await wait_until(reactor(), lambda: received() == 100, "the first progress")
    await wait_until(reactor(), lambda: received() == 300, "the last progress")
    assert reactor().seconds() - started >= 0.9
    feed = query(ota.dsn, "SELECT count(*) FROM feed_log WHERE rollout_unit_id IS NOT NULL")
    assert feed == [(3,)]  # offered, 100, 300: 200 was never written
    await disconnect(client)


@pytest_twisted.ensureDeferred
async def test_a_failed_delta_leaves_the_full_offer_and_a_failure_is_final(
        ota: Ota, kit: dict[str, Any], logs: LogCapture) -> None:
    """FAILED for the delta offer is no failure of the unit: it stays offered and its next
    connection gets the full bundle alone.  FAILED for the full offer is final: a late
    DOWNLOADING (a unit retrying) does not reopen it, and no offer comes again.  The log
    names the rollout in each step (one grep follows a rollout)."""
    ota.upload(kit["v1"])
    v2 = ota.deltas_ready(ota.upload(kit["v2"])["id"])
    await disconnect(await ota.unit("u1", "1.0.0"))
    rollout = ota.rollout(v2["id"], {"edges": ["u1"]})
    client = await ota.unit("u1", "1.0.0")
    await wait_until(reactor(), lambda: len(client.offers) == 2, "the offers")
    patch = next(o for o in client.offers if o.is_delta)
    client.send(status(patch, FirmwareState.FAILED, detail="rebuilt bundle's sha256 differs"))
    await wait_until(reactor(), lambda: "delta failed" in ota.units(rollout["id"])["u1"]["detail"],
                     "the delta's failure recorded")
    assert unit_state(ota.dsn, "u1") == "offered"
    await disconnect(client)

    again = await ota.unit("u1", "1.0.0")
    await wait_until(reactor(), lambda: again.offers, "the offer again")
    await sleep(reactor(), 0.5)
    assert [o.is_delta for o in again.offers] == [False], "the full bundle alone"
    full = again.offers[0]
    again.send(status(full, FirmwareState.FAILED, detail="chunk 3 failed verification"))
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "u1") == "failed", "failed")
    again.send(status(full, FirmwareState.DOWNLOADING, 32768))
    await sleep(reactor(), 0.5)
    assert unit_state(ota.dsn, "u1") == "failed"
    assert ota.units(rollout["id"])["u1"]["detail"] == "chunk 3 failed verification"
    rid = rollout["id"]
    assert logs.matching("edge u1: rollout", f"rollout {rid}: offered 1.1.0 as offer")
    assert logs.matching(f"rollout {rid}: unit", "now failed (chunk 3 failed verification)")
    await disconnect(again)
    third = await ota.unit("u1", "1.0.0")
    await sleep(reactor(), 1.0)
    assert third.offers == []
    await disconnect(third)
