"""The world of the over-the-air update boot tests: the cloud an operator runs (``gridcloud
serve`` and ``gridcloud api``, both with a ``[releases]`` section), one fault-injection proxy
per unit on its link, gridsim as each unit's radio, and the releases (RAUC bundles made from
the CI image's own root, changed with debugfs) that the operator uploads through the API.

Everything the operator does goes through the HTTP API with an admin key, as docs/updates.md
tells an operator to do it: upload a bundle, create a rollout, read the rollout's units.

Tests: a helper of tests/qemu/test_qemu_ota.py.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from gridcloud.api import keys
from gridcloud.pki import PKIDirectory

from support import edge_harness
from support.proxy import FaultProxy
from support.qemu_bundle import BundleJob, SigningKeys, changed_rootfs, start_bundle
from support.qemu_unit import Unit, copy_disk
from support.qemu_world import DATA, edge_config, provision_unit
from support.waiting import wait_until

progress = logging.getLogger("qemu")

#: The unit's OTA files (docs/updates.md): the download, the delta base, the pending reboot.
FIRMWARE = f"{DATA}/firmware"
SITE = "usr/lib/python3/dist-packages"
#: A card of 1 GiB: data-setup grows /data to the end of it at the first boot, as on a unit's
#: SD card, leaving room for a full bundle, the delta base and the journal.
CARD_BYTES = 1 << 30
#: The unit's per-chunk request budget in these tests: the link is loopback, not 2G.
CHUNK_RATE = 200.0


def firmware_config() -> str:
    """The [firmware] section the tests give every unit (docs/updates.md, "Unit settings")."""
    return (
        "\n[firmware]\n"
        "enabled = true\n"
        'keyring = "/etc/rauc/keyring.pem"\n'
        'reboot = "now"\n'
        f"max_chunk_rate = {CHUNK_RATE}\n"
    )


# --- releases --------------------------------------------------------------------------------


@dataclass
class Release:
    """A bundle made for a test: its version, its root image, and the signing job."""

    version: str
    rootfs: Path
    job: BundleJob

    @property
    def bundle(self) -> Path:
        return self.job.path()


def release_files(ci_image: Path, version: str) -> dict[str, tuple[bytes, int]]:
    """The files that make a root of version ``version``: /etc/gridedge/version (what the
    bundle's manifest says) and gridedge's package metadata (what gridedge reports when its
    config names no firmware_version), so the unit reports the bundle's version in Hello."""
    (dist_info,) = (ci_image / "rootfs" / SITE).glob("gridedge-*.dist-info")
    metadata = (dist_info / "METADATA").read_text()
    metadata = re.sub(r"(?m)^Version: .*$", f"Version: {version}", metadata, count=1)
    return {
        "/etc/gridedge/version": (f"{version}\n".encode(), 0o644),
        f"/{SITE}/{dist_info.name}/METADATA": (metadata.encode(), 0o644),
    }


def make_release(ci_image: Path, folder: Path, version: str, *,
                 extra: dict[str, tuple[bytes, int]] | None = None,
                 keys: SigningKeys | None = None, compatible: str | None = None) -> Release:
    """Start signing a bundle of the CI image's root at ``version`` (plus ``extra`` files)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]", "_", version)
    rootfs = changed_rootfs(ci_image / "rootfs.ext4", folder / f"rootfs-{name}.ext4",
                            {**release_files(ci_image, version), **(extra or {})})
    signing = keys or SigningKeys.in_folder(ci_image / "test-keys")
    options = {"compatible": compatible} if compatible else {}
    job = start_bundle(folder / "bundles" / f"{name}.raucb", rootfs, signing, version=version,
                       **options)
    return Release(version, rootfs, job)


def broken_gridedge_files(ci_image: Path) -> dict[str, tuple[bytes, int]]:
    """A gridedge that never gets healthy, and mark-good's health timeout cut to 10 s (each of
    the three boots of a broken slot then takes well under a minute)."""
    platform = (ci_image / "rootfs/etc/gridedge/platform.conf").read_bytes()
    broken = (b"#!/bin/sh\n# Broken on purpose (OTA test): never healthy.\n"
              b'case "$1" in run) exec sleep 100000 ;; *) exit 1 ;; esac\n')
    return {
        "/usr/bin/gridedge": (broken, 0o755),
        "/etc/gridedge/platform.conf": (platform + b"GRIDEDGE_HEALTH_TIMEOUT=10\n", 0o644),
    }


def sha256_file(path: Path, limit: int | None = None, offset: int = 0) -> str:
    """sha256 of ``limit`` bytes of ``path`` from ``offset`` (all of it by default)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(offset)
        left = limit if limit is not None else -1
        while left:
            block = f.read(1 << 20 if left < 0 else min(left, 1 << 20))
            if not block:
                break
            digest.update(block)
            left -= len(block) if left > 0 else 0
    return digest.hexdigest()


# --- the cloud -------------------------------------------------------------------------------


class Problem(AssertionError):
    """The API answered otherwise than the test expected."""


@dataclass
class OtaCloud:
    """``gridcloud serve`` (the units' side) and ``gridcloud api`` (the operator's side) over
    one PostgreSQL database, both configured with the same ``[releases]``."""

    root: Path
    pki: edge_harness.Pki
    dsn: str
    keyring: Path
    compatible: tuple[str, ...]
    deltas_from: int = 3
    port: int = field(default_factory=edge_harness.free_port)
    serve: edge_harness.Proc | None = None
    api: edge_harness.Proc | None = None
    url: str = ""
    admin: str = ""

    def releases_section(self) -> str:
        compatible = ", ".join(f'"{c}"' for c in self.compatible)
        return (
            "[releases]\n"
            f'folder = "{self.root / "releases"}"\n'
            f'keyring = "{self.keyring}"\n'
            f"compatible = [{compatible}]\n"
            "max_bundle_mb = 512\n"
            f"deltas_from = {self.deltas_from}\n"
        )

    def start(self) -> OtaCloud:
        subprocess.run([str(edge_harness.BIN / "gridcloud"), "migrate", "--dsn", self.dsn],
                       check=True, capture_output=True)
        self.admin = keys.create_key(self.dsn, "ops", ["read", "write", "admin"])
        serve_toml = self.root / "serve.toml"
        serve_toml.write_text(
            "[server]\n"
            f'listen = "tcp:{self.port}:interface=127.0.0.1"\n'
            f'cert = "{self.pki.dir / "server.pem"}"\n'
            f'key = "{self.pki.dir / "server.key"}"\n'
            f'ca = "{self.pki.dir / "ca.pem"}"\n\n'
            f'[database]\ndsn = "{self.dsn}"\n\n' + self.releases_section()
        )
        api_toml = self.root / "api.toml"
        api_toml.write_text(
            '[api]\nlisten = "tcp:0:interface=127.0.0.1"\n\n'
            f'[database]\ndsn = "{self.dsn}"\n\n' + self.releases_section()
        )
        self.serve = edge_harness.Proc(
            "gridcloud serve", [sys.executable, "-m", "gridcloud.cli", "serve", "--config",
                                str(serve_toml)], self.root / "serve.log").start()
        self.api = edge_harness.Proc(
            "gridcloud api", [sys.executable, "-m", "gridcloud.cli", "api", "--config",
                              str(api_toml)], self.root / "api.log").start()
        wait_until(self._listening, 60, "gridcloud serve and api to listen",
                   (self.serve.log, self.api.log))
        return self

    def _listening(self) -> bool:
        assert self.serve is not None and self.api is not None
        for proc in (self.serve, self.api):
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited:\n{proc.log.read_text()[-3000:]}")
        found = re.findall(r"gridcloud api listening on .*port=(\d+)", self.api.log.read_text())
        if not found:
            return False
        self.url = f"http://127.0.0.1:{found[-1]}"
        return _connects(self.port)

    def stop(self) -> None:
        for proc in (self.api, self.serve):
            if proc is not None:
                proc.stop(20)

    # --- the operator's calls ------------------------------------------------------------------

    def call(self, method: str, path: str, *, expect: int = 200, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}", **kw.pop("headers", {})}
        response = requests.request(method, self.url + path, headers=headers, timeout=300, **kw)
        if response.status_code != expect:
            raise Problem(f"{method} {path}: {response.status_code}, wanted {expect}: "
                          f"{response.text[:2000]}")
        return response.json() if response.content else None

    def upload(self, bundle: Path, *, expect: int = 201) -> dict[str, Any]:
        """POST /v1/releases with the bundle's bytes, as an operator uploads a release."""
        with bundle.open("rb") as body:
            answer: dict[str, Any] = self.call(
                "POST", "/v1/releases", expect=expect, data=body,
                headers={"Content-Type": "application/octet-stream"})
        progress.info("release uploaded: %s -> %s", bundle.name, answer)
        return answer

    def roll_out(self, release_id: int, edges: list[str], *, wave_size: int = 1,
                 max_failures: int = 0) -> dict[str, Any]:
        answer: dict[str, Any] = self.call(
            "POST", "/v1/rollouts", expect=201,
            json={"release_id": release_id, "target": {"edges": edges},
                  "wave_size": wave_size, "max_failures": max_failures})
        progress.info("rollout %s of release %s to %s", answer["id"], release_id, edges)
        return answer

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", f"/v1/rollouts/{rollout_id}")
        return answer

    def unit(self, rollout_id: int, edge_id: str) -> dict[str, Any]:
        """The rollout's row for ``edge_id``: {edge_id, wave, state, received, size, detail}."""
        for row in self.rollout(rollout_id)["units"]:
            if row["edge_id"] == edge_id:
                return dict(row)
        raise Problem(f"{edge_id} is not in rollout {rollout_id}")

    def wait_for_delta(self, release_id: int, base_version: str, timeout: float,
                       units: Sequence[Unit]) -> dict[str, Any]:
        """Wait until the API has made the release's delta from ``base_version`` (in the
        background, minutes for a big bundle), as an operator waits before rolling out."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            release = self.call("GET", f"/v1/releases/{release_id}")
            found[:] = [d for d in release["deltas"] if d["base_version"] == base_version]
            assert found, f"no delta from {base_version} planned: {release}"
            assert found[0]["state"] in ("making", "ready"), found[0]
            return bool(found[0]["state"] == "ready")

        wait(f"the delta of release {release_id} from {base_version}", ready, timeout, units)
        return found[0]

    def wait_for_edges(self, edge_ids: Sequence[str], timeout: float, units: Sequence[Unit]
                       ) -> None:
        """Wait until the cloud has admitted every unit (an edge exists from its first
        connection on: only then can a rollout name it)."""
        def known() -> bool:
            for edge_id in edge_ids:
                response = requests.get(f"{self.url}/v1/edges/{edge_id}", timeout=30,
                                        headers={"Authorization": f"Bearer {self.admin}"})
                if response.status_code != 200 or not response.json().get("online"):
                    return False
            return True

        wait(f"the cloud to admit {', '.join(edge_ids)}", known, timeout, units)

    def edge(self, edge_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", f"/v1/edges/{edge_id}")
        return answer

    def wait_for_unit(self, rollout_id: int, edge_id: str, states: set[str], timeout: float,
                      units: Sequence[Unit], *, or_halted: Unit | None = None) -> dict[str, Any]:
        """Poll the rollout until ``edge_id`` is in one of ``states`` (or until ``or_halted``
        has reset itself: a unit that reboots may do it before its last status is through),
        idling ``units`` meanwhile. Returns the rollout's row for the unit."""
        seen: list[dict[str, Any]] = [{}]

        def reached() -> bool:
            row = self.unit(rollout_id, edge_id)
            if row != seen[-1]:
                progress.info("rollout %s, %s: %s", rollout_id, edge_id,
                              {k: row.get(k) for k in ("state", "received", "size", "detail")})
                seen.append(row)
            return row["state"] in states or (or_halted is not None and or_halted.halted)

        wait(f"{edge_id} to be {' or '.join(sorted(states))} in rollout {rollout_id} "
             f"(states seen: {[r.get('state') for r in seen[1:]]})", reached, timeout, units)
        return seen[-1]


def wait(what: str, predicate: Callable[[], bool], timeout: float, units: Sequence[Unit]
         ) -> None:
    """Wait until ``predicate()``, reading the consoles of ``units`` meanwhile (Unit.idle);
    a timeout quotes every unit's console tail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(str(u.error(f"[{u.disk.parent.name}]")) for u in units)
            raise Problem(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        if not units:
            time.sleep(1)
        for u in units:
            u.idle(1.0 / len(units))


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


# --- units -----------------------------------------------------------------------------------


@dataclass
class OtaUnit:
    """A unit of the OTA tests: QEMU on a 1 GiB card, its radio (gridsim), its link's proxy."""

    edge_id: str
    unit: Unit
    sim: edge_harness.Sim
    proxy: FaultProxy
    tls: Path

    def provision(self) -> None:
        """The factory's configuration: the cloud through this unit's proxy, OTA enabled."""
        config = edge_config(self.proxy.port) + firmware_config()
        provision_unit(self.unit, self.tls, config)

    def firmware_files(self) -> set[str]:
        """The names in the unit's firmware folder on /data (empty before any offer)."""
        status, output = self.unit.run(f"ls -1 {FIRMWARE} 2>/dev/null")
        return set(output.split()) if status == 0 else set()


def make_ota_unit(root: Path, ci_image: Path, pki_dir: Path, edge_id: str,
                  cloud_port: int, *, seed: int) -> OtaUnit:
    """A factory-fresh unit (slot A, v1) with its own certificate, radio and proxy."""
    folder = root / edge_id
    folder.mkdir(parents=True)
    _, tls = PKIDirectory(pki_dir).edge(edge_id, folder / "tls")
    disk = copy_disk(ci_image / "disk.img", folder / "disk.img")
    with disk.open("r+b") as f:
        f.truncate(CARD_BYTES)
    # Field serials (sparse, from the seed): each unit's meters are its own.
    sim = edge_harness.Sim(folder, folder / "radio", meters=4, speed=300, duration="30d",
                           seed=seed, extra=("--fleet", "field")).start()
    proxy = FaultProxy("127.0.0.1", cloud_port, seed=seed).start()
    unit = Unit(disk, folder / "console.log", radio=sim.port)
    return OtaUnit(edge_id, unit, sim, proxy, tls)
