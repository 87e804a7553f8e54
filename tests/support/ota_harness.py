"""The cloud half of over-the-air updates, for real: a ``gridcloud api`` process and an
in-process ``gridcloud serve`` (CloudService on a loopback port, mutual TLS) sharing one
PostgreSQL database and one releases folder, and units that are gridedge.loadgen clients
(the edge's own gridwire session) saying Hello with a firmware version.

Tests: a helper of tests/cloud/test_cloud_rollouts.py and
tests/cloud/test_cloud_firmware_serving.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from gridcloud.api import keys
from gridcloud.config import ReleasesConfig
from gridcloud.server import CloudService
from gridedge import loadgen
from gridwire import FirmwareOffer, FirmwareState, FirmwareStatus

from support import release_bundles as rb
from support.api_harness import ApiProcess
from support.cloud_harness import CloudPKI, endpoint_of, hello, query, start_cloud, within
from support.qemu_bundle import SigningKeys

OCTETS = {"Content-Type": "application/octet-stream"}


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


@dataclass
class Ota:
    """One test's cloud: the API process, the serve service, the admin key, the folder."""

    dsn: str
    api: ApiProcess
    cloud: CloudService
    pki: CloudPKI
    admin: str
    folder: Path

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.api.call(method, path, self.admin, **kw)

    def get(self, path: str) -> Any:
        r = self.api.get(path, self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    def upload(self, bundle: Path) -> dict[str, Any]:
        r = self.call("POST", "/v1/releases", data=bundle.read_bytes(), headers=OCTETS)
        assert r.status_code == 201, r.text
        release: dict[str, Any] = r.json()
        return release

    def deltas_ready(self, release_id: int, seconds: float = 60.0) -> dict[str, Any]:
        """The release once none of its deltas is being made."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            doc: dict[str, Any] = self.get(f"/v1/releases/{release_id}")
            if all(d["state"] != "making" for d in doc["deltas"]):
                return doc
            time.sleep(0.1)
        raise AssertionError(f"deltas of release {release_id} not made in {seconds} s")

    def rollout(self, release_id: int, target: dict[str, Any], **kw: Any) -> dict[str, Any]:
        r = self.call("POST", "/v1/rollouts", json={"release_id": release_id,
                                                    "target": target, **kw})
        assert r.status_code == 201, r.text
        rollout: dict[str, Any] = r.json()
        return rollout

    def units(self, rollout_id: int) -> dict[str, dict[str, Any]]:
        """The rollout's units by edge id."""
        return {u["edge_id"]: u for u in self.get(f"/v1/rollouts/{rollout_id}")["units"]}

    async def unit(self, edge_id: str, firmware: str) -> loadgen.EdgeClient:
        """A unit connected (Welcome received) that runs ``firmware``."""
        tls = self.pki.client_tls(self.pki.edge(edge_id))
        client, _ = await loadgen.connect(reactor(), endpoint_of(self.cloud), tls,
                                          hello(firmware_version=firmware))
        await within(reactor(), client.welcome, 10)
        return client


async def ota_world(pki: CloudPKI, dsn: str, folder: Path, signing: SigningKeys
                    ) -> AsyncIterator[Ota]:
    """Start the API and serve over ``dsn`` sharing ``folder``/releases; yield; stop both."""
    from gridcloud import migrations

    migrations.migrate(dsn)
    section = rb.releases_section(folder / "releases", signing)
    api = ApiProcess(dsn, folder / "api.log", {"releases": section}).start()
    cloud = None
    try:
        releases = ReleasesConfig(folder=folder / "releases", keyring=signing.ca,
                                  compatible=(rb.COMPATIBLE,))
        cloud = await start_cloud(reactor(), pki, dsn, releases=releases)
        yield Ota(dsn, api, cloud, pki, keys.create_key(dsn, "admin", ["read", "write", "admin"]),
                  folder / "releases")
    finally:
        if cloud is not None:
            await cloud.stopService()
        api.stop()


async def disconnect(client: loadgen.EdgeClient) -> None:
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)


def status(offer: FirmwareOffer | int, state: FirmwareState, received: int = 0,
           detail: str = "") -> FirmwareStatus:
    offer_id = offer.offer_id if isinstance(offer, FirmwareOffer) else offer
    return FirmwareStatus(offer_id=offer_id, state=state, received=received, detail=detail)


def unit_state(dsn: str, edge_id: str) -> str | None:
    rows = query(dsn, "SELECT state FROM rollout_units WHERE edge_id = %s ORDER BY id DESC "
                      "LIMIT 1", (edge_id,))
    return rows[0][0] if rows else None
