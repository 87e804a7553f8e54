"""Rollouts end to end on the cloud side (a real ``gridcloud api`` and ``gridcloud serve``
over one PostgreSQL, units as real gridwire sessions): waves of one (the second unit is
offered only after the first reports healthy on the new version), the self-pause on a
rollback with the unit's reason, resume, pause, cancel, targets by tag and percentage, one
unfinished rollout per unit, and the units' changes on the live feed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from gridedge import loadgen
from gridwire import FirmwareState

from support import release_bundles as rb
from support.cloud_harness import CloudPKI, query, sleep, wait_until
from support.ota_harness import Ota, disconnect, ota_world, reactor, status, unit_state


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bundles")
    signing = rb.keys(folder / "keys")
    return {"keys": signing, "v2": rb.bundle(folder, signing, "2.0.0")}


@pytest_twisted.async_yield_fixture
async def ota(cloud_pki: CloudPKI, pg_dsn: str, tmp_path: Path, kit: dict[str, Any]
              ) -> AsyncIterator[Ota]:
    async for world in ota_world(cloud_pki, pg_dsn, tmp_path, kit["keys"]):
        yield world


async def install(ota: Ota, client: loadgen.EdgeClient, edge: str, end: FirmwareState,
                  detail: str = "") -> loadgen.EdgeClient:
    """The unit's steps as the agent reports them; after the reboot, in a new connection
    (on 2.0.0 if healthy, else on 1.0.0), the end."""
    await wait_until(reactor(), lambda: client.offers, f"{edge}'s offer")
    offer = client.offers[0]
    for state in (FirmwareState.DOWNLOADING, FirmwareState.DOWNLOADED, FirmwareState.VERIFYING,
                  FirmwareState.INSTALLING, FirmwareState.INSTALLED, FirmwareState.REBOOTING):
        client.send(status(offer, state, offer.size if state == FirmwareState.DOWNLOADING
                           else 0))
    await wait_until(reactor(), lambda: unit_state(ota.dsn, edge) == "rebooting", "rebooting")
    await disconnect(client)
    after = await ota.unit(edge, "2.0.0" if end == FirmwareState.HEALTHY else "1.0.0")
    after.send(status(offer, end, detail=detail))
    return after


async def two_units(ota: Ota) -> tuple[str, str]:
    """Edges a and b known to the cloud (they connected once), in wave order of a rollout
    of both with waves of one."""
    for edge in ("unit-a", "unit-b"):
        await disconnect(await ota.unit(edge, "1.0.0"))
    return "unit-a", "unit-b"


def waves(ota: Ota, rollout_id: int) -> list[str]:
    units = ota.units(rollout_id)
    return sorted(units, key=lambda e: units[e]["wave"])


@pytest_twisted.ensureDeferred
async def test_waves_of_one_the_second_starts_after_the_first_is_healthy(
        ota: Ota, kit: dict[str, Any]) -> None:
    """Two units, waves of one, both online: only the first is offered; when it reports
    HEALTHY from 2.0.0 the second is offered at once (NOTIFY); when it is healthy too the
    rollout is completed, with every step on the API."""
    await two_units(ota)
    release = ota.upload(kit["v2"])
    clients = {e: await ota.unit(e, "1.0.0") for e in ("unit-a", "unit-b")}
    rollout = ota.rollout(release["id"], {"edges": list(clients)}, wave_size=1)
    assert rollout["state"] == "running" and rollout["waves"] == 2
    first, second = waves(ota, rollout["id"])
    await wait_until(reactor(), lambda: clients[first].offers, "the first unit's offer")
    await sleep(reactor(), 1.0)
    assert clients[second].offers == []
    assert ota.units(rollout["id"])[second]["state"] == "pending"

    done = await install(ota, clients[first], first, FirmwareState.HEALTHY)
    await wait_until(reactor(), lambda: clients[second].offers, "the second unit's offer")
    doc = ota.get(f"/v1/rollouts/{rollout['id']}")
    assert doc["current_wave"] == 1 and doc["counts"]["healthy"] == 1
    assert doc["counts"]["offered"] == 1

    done2 = await install(ota, clients[second], second, FirmwareState.HEALTHY)
    await wait_until(reactor(), lambda: ota.get(f"/v1/rollouts/{rollout['id']}")["state"]
                     == "completed", "completed")
    doc = ota.get(f"/v1/rollouts/{rollout['id']}")
    assert doc["counts"]["healthy"] == 2 and doc["finished_at"] is not None
    for client in (done, done2):
        await disconnect(client)


@pytest_twisted.ensureDeferred
async def test_a_rollback_pauses_the_rollout_and_resume_goes_on(
        ota: Ota, kit: dict[str, Any]) -> None:
    """max_failures 0: the first unit's ROLLED_BACK (with its reason) pauses the rollout by
    itself before the second wave; resuming accepts that failure and offers the second."""
    await two_units(ota)
    release = ota.upload(kit["v2"])
    clients = {e: await ota.unit(e, "1.0.0") for e in ("unit-a", "unit-b")}
    rollout = ota.rollout(release["id"], {"edges": list(clients)}, wave_size=1,
                          max_failures=0)
    first, second = waves(ota, rollout["id"])
    reason = "slot B not healthy after 600 s: uplink not running"
    back = await install(ota, clients[first], first, FirmwareState.ROLLED_BACK, reason)
    await wait_until(reactor(), lambda: ota.get(f"/v1/rollouts/{rollout['id']}")["state"]
                     == "paused", "paused")
    doc = ota.get(f"/v1/rollouts/{rollout['id']}")
    assert doc["paused_reason"].startswith("paused itself: 1 unit(s) failed or rolled back")
    unit = ota.units(rollout["id"])[first]
    assert (unit["state"], unit["detail"]) == ("rolled_back", reason)
    await sleep(reactor(), 0.5)
    assert clients[second].offers == []

    r = ota.call("POST", f"/v1/rollouts/{rollout['id']}/resume")
    assert r.status_code == 200 and r.json()["state"] == "running"
    await wait_until(reactor(), lambda: clients[second].offers, "the second unit's offer")
    assert ota.get(f"/v1/rollouts/{rollout['id']}")["paused_reason"] is None
    await disconnect(back)
    await disconnect(clients[second])


@pytest_twisted.ensureDeferred
async def test_pause_resume_cancel(ota: Ota, kit: dict[str, Any]) -> None:
    """Paused by an operator: no new wave, but the unit already going is offered again on
    reconnect; resumed: the wave moves on; cancelled: open units are cancelled, nothing is
    offered, and resuming it is a 409; a read key cannot control a rollout."""
    await two_units(ota)
    release = ota.upload(kit["v2"])
    rollout = ota.rollout(release["id"], {"edges": ["unit-a", "unit-b"]}, wave_size=1)
    rid = rollout["id"]
    first, second = waves(ota, rid)
    client = await ota.unit(first, "1.0.0")
    await wait_until(reactor(), lambda: client.offers, "the offer")
    client.send(status(client.offers[0], FirmwareState.DOWNLOADING, 100))
    await wait_until(reactor(), lambda: unit_state(ota.dsn, first) == "downloading", "down")

    r = ota.call("POST", f"/v1/rollouts/{rid}/pause")
    assert r.status_code == 200 and r.json()["state"] == "paused"
    assert r.json()["paused_reason"] == "paused by admin"
    await disconnect(client)
    client = await ota.unit(first, "1.0.0")  # half-way: offered again while paused
    await wait_until(reactor(), lambda: client.offers, "the offer while paused")
    done = await install(ota, client, first, FirmwareState.HEALTHY)
    other = await ota.unit(second, "1.0.0")
    await sleep(reactor(), 1.0)
    assert other.offers == []  # paused: the second wave does not start
    assert ota.get(f"/v1/rollouts/{rid}")["current_wave"] == 0

    assert ota.call("POST", f"/v1/rollouts/{rid}/resume").json()["state"] == "running"
    await wait_until(reactor(), lambda: other.offers, "the second wave after resume")

    r = ota.call("POST", f"/v1/rollouts/{rid}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert {u["state"] for u in r.json()["units"]} == {"healthy", "cancelled"}
    assert ota.call("POST", f"/v1/rollouts/{rid}/resume").status_code == 409
    await disconnect(other)
    again = await ota.unit(second, "1.0.0")
    await sleep(reactor(), 1.0)
    assert again.offers == []
    key = ota.api.call("POST", f"/v1/rollouts/{rid}/pause", None)
    assert key.status_code == 401
    assert ota.call("POST", "/v1/rollouts/999999/pause").status_code == 404
    for c in (done, again):
        await disconnect(c)


@pytest_twisted.ensureDeferred
async def test_targets_by_tag_and_percent_and_one_open_rollout_per_unit(
        ota: Ota, kit: dict[str, Any]) -> None:
    """Tags set by PUT are on the edge and pick the rollout's units; a percentage is a
    stable share (the same units twice, all at 100); a unit in an unfinished rollout cannot
    join another (409); an empty choice is a 400."""
    names = [f"t{i:02d}" for i in range(20)]
    for name in names:
        await disconnect(await ota.unit(name, "1.0.0"))
    for name in names[:3]:
        r = ota.call("PUT", f"/v1/edges/{name}/tags", json={"tags": ["north", "pilot"]})
        assert r.status_code == 200 and r.json() == {"edge_id": name,
                                                     "tags": ["north", "pilot"]}
    assert ota.get("/v1/edges/t00")["tags"] == ["north", "pilot"]
    assert ota.get("/v1/edges/t05")["tags"] == []
    release = ota.upload(kit["v2"])
    tagged = ota.rollout(release["id"], {"tag": "pilot"}, wave_size=2)
    assert sorted(u["edge_id"] for u in tagged["units"]) == names[:3]
    assert sorted(u["wave"] for u in tagged["units"]) == [0, 0, 1]

    r = ota.call("POST", "/v1/rollouts", json={"release_id": release["id"],
                                               "target": {"edges": ["t01", "t10"]}})
    assert r.status_code == 409 and "t01" in r.json()["detail"]
    ota.call("POST", f"/v1/rollouts/{tagged['id']}/cancel")

    percent = ota.rollout(release["id"], {"percent": 50}, wave_size=100)
    chosen = {u["edge_id"] for u in percent["units"]}
    assert 3 <= len(chosen) <= 17  # half of 20, give or take the hash
    ota.call("POST", f"/v1/rollouts/{percent['id']}/cancel")
    again = ota.rollout(release["id"], {"percent": 50}, wave_size=100)
    assert {u["edge_id"] for u in again["units"]} == chosen
    ota.call("POST", f"/v1/rollouts/{again['id']}/cancel")
    smaller = ota.rollout(release["id"], {"percent": 25}, wave_size=100)
    assert {u["edge_id"] for u in smaller["units"]} <= chosen
    ota.call("POST", f"/v1/rollouts/{smaller['id']}/cancel")
    everyone = ota.rollout(release["id"], {"percent": 100}, wave_size=100)
    assert len(everyone["units"]) == 20
    ota.call("POST", f"/v1/rollouts/{everyone['id']}/cancel")

    r = ota.call("POST", "/v1/rollouts", json={"release_id": release["id"],
                                               "target": {"tag": "nobody"}})
    assert r.status_code == 400 and "no unit matches" in r.json()["detail"]
    r = ota.call("POST", "/v1/rollouts", json={"release_id": release["id"],
                                               "target": {"tag": "north", "percent": 5}})
    assert r.status_code == 400
    listed = ota.get("/v1/rollouts?state=cancelled")["items"]
    assert len(listed) == 5 and all(x["state"] == "cancelled" for x in listed)


@pytest_twisted.ensureDeferred
async def test_unit_changes_are_on_the_live_feed(ota: Ota, kit: dict[str, Any]) -> None:
    """Each state change of a unit is an event ``rollout`` on /v1/feed, in order."""
    await disconnect(await ota.unit("unit-f", "1.0.0"))
    release = ota.upload(kit["v2"])
    rollout = ota.rollout(release["id"], {"edges": ["unit-f"]})
    client = await ota.unit("unit-f", "1.0.0")
    done = await install(ota, client, "unit-f", FirmwareState.HEALTHY)
    await wait_until(reactor(), lambda: unit_state(ota.dsn, "unit-f") == "healthy", "healthy")
    r = ota.api.get("/v1/feed?wait=0", ota.admin, headers={"Last-Event-ID": "0-0-0"})
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: ")]
    kinds = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert set(kinds) == {"rollout"}
    assert all(e["rollout_id"] == rollout["id"] and e["edge_id"] == "unit-f" for e in events)
    assert events[-1]["state"] == "healthy"
    assert len(events) >= 3  # offered, ..., healthy (a quick succession may repeat the latest)
    await disconnect(done)


def test_two_last_reports_of_a_wave_in_two_transactions_start_the_next_wave_once(
        pg_dsn: str, tmp_path: Path) -> None:
    """The last two units of wave 0 report healthy on two connections at once (as on two
    serve nodes): the second waits for the first's lock on the rollout, then sees it, and
    the next wave starts exactly once (one NOTIFY)."""
    import psycopg2
    from gridcloud import migrations

    migrations.migrate(pg_dsn)
    query(pg_dsn, "INSERT INTO edges (edge_id) VALUES ('a'), ('b'), ('c')")
    query(pg_dsn, "INSERT INTO releases (version, compatible, size, sha256, signer, file) "
                  "VALUES ('2', 'x', 1, repeat('0', 64), 's', 'f')")
    (rollout,), = query(pg_dsn, "INSERT INTO rollouts (release_id, target, wave_size, "
                                "max_failures) VALUES (1, '{}', 2, 0) RETURNING id")
    query(pg_dsn, "INSERT INTO rollout_units (rollout_id, edge_id, wave, state) VALUES "
                  "(%s, 'a', 0, 'rebooting'), (%s, 'b', 0, 'rebooting'), (%s, 'c', 1, 'pending')",
          (rollout, rollout, rollout))
    units = dict(query(pg_dsn, "SELECT edge_id, id FROM rollout_units"))
    listener = psycopg2.connect(pg_dsn)
    listener.autocommit = True
    listener.cursor().execute("LISTEN gridcloud_rollouts")
    first = psycopg2.connect(pg_dsn)
    with first.cursor() as cur:  # holds the rollout's lock until COMMIT
        cur.execute("SELECT rollout_unit_report(%s, 'a', 'healthy', 0, NULL, '')", (units["a"],))
    # The second node: an asynchronous connection, so this test can watch it wait.
    second = psycopg2.connect(pg_dsn, async_=1)
    _settle(second)
    try:
        cursor = second.cursor()  # kept: psycopg2 needs it until the statement is done
        cursor.execute("SELECT rollout_unit_report(%s, 'b', 'healthy', 0, NULL, '')",
                       (units["b"],))
        time.sleep(1.0)
        assert second.poll() != psycopg2.extensions.POLL_OK  # waiting for the lock
        assert query(pg_dsn, "SELECT current_wave FROM rollouts") == [(0,)]
        first.commit()
        _settle(second)
    finally:
        first.close()
        second.close()
    assert query(pg_dsn, "SELECT current_wave, state FROM rollouts") == [(1, "running")]
    time.sleep(0.2)
    listener.poll()
    assert [n.payload for n in listener.notifies] == [str(rollout)]
    listener.close()


def _settle(connection: Any, seconds: float = 20.0) -> None:
    """Poll an asynchronous psycopg2 connection until its work is done."""
    import select

    import psycopg2

    deadline = time.monotonic() + seconds
    while connection.poll() != psycopg2.extensions.POLL_OK:
        assert time.monotonic() < deadline, "the statement did not finish"
        select.select([connection.fileno()], [], [], 0.1)
