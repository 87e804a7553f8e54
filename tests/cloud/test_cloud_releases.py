"""Release uploads to a real ``gridcloud api`` with real RAUC bundles: a good one is recorded
and stored by hash; a bad signature, a wrong compatible, junk, a body over max_bundle_mb and a
duplicate version are refused with the reason and leave nothing behind; deltas are made in
the background and really rebuild the target bundle."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from gridedge.firmware.delta import insert_tree

from support import release_bundles as rb
from support.api_harness import ApiProcess, World, query, running_api
from support.qemu_bundle import SigningKeys

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Keys, a second unrelated key, and the bundles the tests upload (made once)."""
    folder = tmp_path_factory.mktemp("bundles")
    good = rb.keys(folder / "keys")
    other = rb.keys(folder / "other-keys")
    return {
        "folder": folder, "keys": good,
        "v1": rb.bundle(folder, good, "1.0.0"),
        "v2": rb.bundle(folder, good, "1.1.0"),
        "v3": rb.bundle(folder, good, "1.2.0"),
        "foreign": rb.bundle(folder, other, "9.0.0", name="foreign.raucb"),
        "board": rb.bundle(folder, good, "1.0.0", compatible="some-other-board"),
    }


@pytest.fixture(scope="module")
def releases_api(world: World, kit: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("releases-api")
    keys: SigningKeys = kit["keys"]
    yield from running_api(world.dsn, folder / "api.log",
                           releases=rb.releases_section(folder / "releases", keys,
                                                        max_bundle_mb=2))


def folder_of(api: ApiProcess) -> Path:
    return api.log.parent / "releases"


def upload(api: ApiProcess, key: str, path: Path) -> requests.Response:
    return api.call("POST", "/v1/releases", key, data=path.read_bytes(), headers=OCTETS)


def incoming(api: ApiProcess) -> list[Path]:
    folder = folder_of(api) / "incoming"
    return sorted(folder.iterdir()) if folder.exists() else []


def wait_for(condition: Any, what: str, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_good_bundle_is_recorded_stored_by_hash_and_listed(
        releases_api: ApiProcess, world: World, kit: dict[str, Any]) -> None:
    """An admin's signed bundle: 201 with RAUC's version, compatible and signer, its sha256 and
    size; the file lies in the folder under its hash; list and one show it; a read key may
    not upload."""
    data = kit["v1"].read_bytes()
    assert upload(releases_api, world.reader, kit["v1"]).status_code == 403
    r = upload(releases_api, world.admin, kit["v1"])
    assert r.status_code == 201, r.text
    release = r.json()
    assert release["version"] == "1.0.0" and release["compatible"] == rb.COMPATIBLE
    assert release["size"] == len(data)
    assert release["sha256"] == hashlib.sha256(data).hexdigest()
    assert release["signer"] == "O = gridedge CI, CN = gridedge CI bundle signer"
    assert release["uploaded_by"] == "admin" and release["deltas"] == []
    stored = folder_of(releases_api) / "bundles" / f"{release['sha256']}.raucb"
    assert stored.read_bytes() == data
    assert incoming(releases_api) == []  # the spooled body is gone
    assert releases_api.get(f"/v1/releases/{release['id']}", world.reader).json() == release
    listed = releases_api.get("/v1/releases", world.reader).json()["items"]
    assert release in listed


def test_refusals_say_why_and_leave_nothing(
        releases_api: ApiProcess, world: World, kit: dict[str, Any]) -> None:
    """Signed by another CA, another compatible, junk, a wrong media type, an empty body:
    refused with the reason, and no row or file left."""
    before = query(world.dsn, "SELECT count(*) FROM releases")
    r = upload(releases_api, world.admin, kit["foreign"])
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "signature verification failed" in r.json()["detail"]
    r = upload(releases_api, world.admin, kit["board"])
    assert r.status_code == 422
    assert "compatible 'some-other-board' is not one this cloud serves" in r.json()["detail"]
    r = releases_api.call("POST", "/v1/releases", world.admin, data=b"\x00" * 5000,
                          headers=OCTETS)
    assert r.status_code == 422 and "bundle" in r.json()["detail"].lower()
    r = releases_api.call("POST", "/v1/releases", world.admin, data=b"x",
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = releases_api.call("POST", "/v1/releases", world.admin, data=b"", headers=OCTETS)
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert query(world.dsn, "SELECT count(*) FROM releases") == before
    assert incoming(releases_api) == []
    assert not (folder_of(releases_api) / "bundles" / "foreign.raucb").exists()


def test_a_body_over_max_bundle_mb_is_413_declared_or_chunked(
        releases_api: ApiProcess, world: World) -> None:
    """3 MiB against max_bundle_mb = 2: 413 whether the length is declared or the body is
    chunked, and the spool kept at most the limit (then nothing)."""
    big = b"\x5a" * (3 << 20)
    r = releases_api.call("POST", "/v1/releases", world.admin, data=big, headers=OCTETS)
    assert r.status_code == 413 and "2 MiB" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = releases_api.call("POST", "/v1/releases", world.admin, data=chunks(), headers=OCTETS)
    assert r.status_code == 413
    assert incoming(releases_api) == []


def test_duplicate_version_is_409(
        releases_api: ApiProcess, world: World, kit: dict[str, Any]) -> None:
    """The same version of the same compatible again: 409, one row."""
    first = upload(releases_api, world.admin, kit["v1"])
    assert first.status_code in (201, 409)  # the first test may have uploaded it already
    r = upload(releases_api, world.admin, kit["v1"])
    assert r.status_code == 409 and "1.0.0" in r.json()["detail"]
    assert query(world.dsn, "SELECT count(*) FROM releases WHERE version = '1.0.0'") == [(1,)]


def test_deltas_are_made_in_the_background_and_rebuild_the_bundle(
        releases_api: ApiProcess, world: World, kit: dict[str, Any], tmp_path: Path) -> None:
    """v1.1 after v1.0, then v1.2: deltas from every earlier release (deltas_from = 3) are
    listed as making, then ready; each patch rebuilds the target byte for byte with zstd -d
    --patch-from and the unit's hash-tree insertion (docs/updates.md, "Deltas"), and is a
    small fraction of the bundle."""
    upload(releases_api, world.admin, kit["v1"])  # 201 or 409: there either way
    v2 = upload(releases_api, world.admin, kit["v2"])
    assert v2.status_code == 201, v2.text
    assert [d["state"] for d in v2.json()["deltas"]] == ["making"]
    v3 = upload(releases_api, world.admin, kit["v3"]).json()
    assert [d["base_version"] for d in v3["deltas"]] == ["1.1.0", "1.0.0"]

    def ready() -> Any:
        doc = releases_api.get(f"/v1/releases/{v3['id']}", world.reader).json()
        return doc if all(d["state"] == "ready" for d in doc["deltas"]) else None

    done = wait_for(ready, "the deltas of 1.2.0")
    folder = folder_of(releases_api)
    target = kit["v3"].read_bytes()
    for delta in done["deltas"]:
        base = kit["v2"] if delta["base_version"] == "1.1.0" else kit["v1"]
        patch = folder / "deltas" / f"{delta['base_id']}-{v3['id']}.zst"
        assert hashlib.sha256(patch.read_bytes()).hexdigest() == delta["sha256"]
        assert patch.stat().st_size == delta["size"] < len(target) * 0.05
        out = tmp_path / f"rebuilt-{delta['base_id']}"
        subprocess.run(["zstd", "-q", "-d", "--long=27", f"--patch-from={base}", str(patch),
                        "-o", str(out)], check=True)
        assert out.stat().st_size < len(target), "the patch rebuilds it without its tree"
        for _ in insert_tree(out):  # the unit's step: the hash tree put back
            pass
        assert hashlib.sha256(out.read_bytes()).hexdigest() == v3["sha256"]


def test_spools_left_by_a_killed_process_are_swept(tmp_path: Path) -> None:
    """An upload spool a day old is removed at start; a fresh one (an upload going on in
    another process) and other files are kept."""
    import os

    from gridcloud.api import upload as spooling

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    old, fresh, other = (incoming / n for n in ("upload-a.raucb", "upload-b.raucb", "keep"))
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 90000, time.time() - 90000))
    os.utime(other, (time.time() - 90000, time.time() - 90000))
    assert spooling.sweep(tmp_path) == 1
    assert sorted(p.name for p in incoming.iterdir()) == ["keep", "upload-b.raucb"]
    assert spooling.sweep(tmp_path / "nowhere") == 0
