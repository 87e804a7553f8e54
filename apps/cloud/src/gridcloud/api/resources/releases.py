"""``/v1/releases``: signed RAUC bundles uploaded by an admin, the source of every rollout.

An upload (``POST``, the bundle as ``application/octet-stream``) is spooled into
the releases folder while it arrives (gridcloud.api.upload), so a bundle is never
held in memory and one over ``max_bundle_mb`` is a 413 that never filled the disk.
It is then checked by RAUC itself (gridcloud.bundles: ``rauc info`` against the
configured keyring, in a child process), and refused (422, with RAUC's reason)
if its signature does not verify or its ``compatible`` is not one this cloud
serves; a version already uploaded for that compatible is a 409.  An accepted
bundle is hard-linked to ``bundles/<sha256>.raucb`` and recorded in ``releases``;
its deltas are then made in the background (gridcloud.api.deltas) and listed
with the release as they become ready.

Tests: tests/cloud/test_cloud_releases.py.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ... import bundles
from ..config import ApiConfig
from ..deltas import DeltaMaker
from ..params import Param, page_params, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from ..upload import BundleSpool
from . import paging

_COLUMNS = """
r.id, r.version, r.compatible, r.size, r.sha256, r.signer, r.uploaded_by, r.uploaded_at,
coalesce((SELECT json_agg(json_build_object(
    'base_id', d.base_id, 'base_version', b.version, 'state', d.state, 'size', d.size,
    'sha256', d.sha256, 'reason', d.reason) ORDER BY d.base_id DESC)
  FROM release_deltas d JOIN releases b ON b.id = d.base_id WHERE d.release_id = r.id),
  '[]'::json)
"""

ONE_SQL = f"SELECT {_COLUMNS} FROM releases r WHERE r.id = %(id)s"

LIST_SQL = f"""
SELECT {_COLUMNS} FROM releases r
 WHERE (%(compatible)s::text IS NULL OR r.compatible = %(compatible)s)
   AND (%(after)s::bigint IS NULL OR r.id < %(after)s)
 ORDER BY r.id DESC LIMIT %(limit)s
"""

EXISTS_SQL = "SELECT id FROM releases WHERE compatible = %s AND version = %s"

INSERT_SQL = """
INSERT INTO releases (version, compatible, size, sha256, signer, file, uploaded_by)
VALUES (%(version)s, %(compatible)s, %(size)s, %(sha256)s, %(signer)s, %(file)s, %(by)s)
ON CONFLICT (compatible, version) DO NOTHING
RETURNING id
"""

_HEX = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}

DELTA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base_id", "base_version", "state", "size", "sha256", "reason"],
    "properties": {
        "base_id": {"type": "integer", "description": "The release the patch applies to."},
        "base_version": {"type": "string"},
        "state": {"type": "string", "enum": ["making", "ready", "failed", "skipped"],
                  "description": "Only `ready` deltas are offered to units."},
        "size": {"type": ["integer", "null"]},
        "sha256": _HEX,
        "reason": {"type": ["string", "null"],
                   "description": "Why it failed or was skipped."},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "version", "compatible", "size", "sha256", "signer", "uploaded_by",
                 "uploaded_at", "deltas"],
    "properties": {
        "id": {"type": "integer"},
        "version": {"type": "string", "description": "The manifest's [update] version."},
        "compatible": {"type": "string"},
        "size": {"type": "integer", "description": "Bytes of the bundle."},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "signer": {"type": "string", "description": "Subject of the signing certificate."},
        "uploaded_by": {"type": ["string", "null"], "description": "The API key's name."},
        "uploaded_at": {"type": "string", "format": "date-time"},
        "deltas": {"type": "array", "items": DELTA_SCHEMA},
    },
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    rid, version, compatible, size, sha256, signer, by, at, deltas = row
    return {
        "id": rid, "version": version, "compatible": compatible, "size": size,
        "sha256": sha256, "signer": signer, "uploaded_by": by, "uploaded_at": rfc3339(at),
        "deltas": deltas,
    }


class Releases:
    """The handlers; they share the process's reactor (child processes) and delta maker."""

    def __init__(self, reactor: Any, deltas: DeltaMaker) -> None:
        self._reactor = reactor
        self._deltas = deltas

    async def upload(self, call: Call) -> Any:
        config = call.config.releases
        spool = call.body
        if not config.enabled or not isinstance(spool, BundleSpool):
            raise Problem("not-configured", "releases are off: no [releases] folder")
        if spool.too_large:
            raise Problem("body-too-large", f"a bundle may have at most {config.max_bundle_mb} "
                                            "MiB (max_bundle_mb)")
        if spool.received == 0:
            raise Problem("bad-bundle", "the body is empty: send the .raucb file")
        spool.flush()
        assert config.folder is not None and config.keyring is not None
        try:
            info = await bundles.inspect(self._reactor, spool.path, config.keyring)
        except bundles.BundleRefused as exc:
            raise Problem("bad-bundle", str(exc)) from None
        if info.compatible not in config.compatible:
            raise Problem("bad-bundle", f"compatible {info.compatible!r} is not one this cloud "
                                        f"serves ({', '.join(config.compatible)})")
        if await call.db.rows(EXISTS_SQL, (info.compatible, info.version)):
            raise Problem("conflict", f"version {info.version} of {info.compatible} is "
                                      "uploaded already")
        name = f"bundles/{info.sha256}.raucb"
        (config.folder / "bundles").mkdir(parents=True, exist_ok=True)
        # Same file system: no copy.  The file exists if these bytes were accepted before
        # under a version since deleted from the table by hand.
        with contextlib.suppress(FileExistsError):
            os.link(spool.path, config.folder / name)
        rows = await call.db.rows(INSERT_SQL, {
            "version": info.version, "compatible": info.compatible, "size": info.size,
            "sha256": info.sha256, "signer": info.signer, "file": name,
            "by": call.caller.name})
        if not rows:  # another upload of the same version won the race
            raise Problem("conflict", f"version {info.version} of {info.compatible} is "
                                      "uploaded already")
        release_id = rows[0][0]
        await self._deltas.plan(release_id)
        return item((await call.db.rows(ONE_SQL, {"id": release_id}))[0])

    async def one(self, call: Call) -> Any:
        rows = await call.db.rows(ONE_SQL, {"id": call.path["release_id"]})
        if not rows:
            raise Problem("not-found", f"no release {call.path['release_id']}")
        return item(rows[0])

    async def list_releases(self, call: Call) -> Any:
        query, after = paging.after(call.query, "releases", [int])
        limit = call.query["limit"]
        rows = await call.db.rows(LIST_SQL, {
            "compatible": call.query["compatible"], "after": after[0] if after else None,
            "limit": limit + 1})
        return paging.page(rows, limit, query, lambda r: [r[0]], item)


RELEASE_PATH = Param("release_id", "integer", "Release id.", where="path",
                     minimum=1, maximum=2**63 - 1)

FILTERS = (
    Param("compatible", "string", "Only releases of this RAUC compatible.",
          pattern=r"^[A-Za-z0-9._+-]{1,128}$"),
)


def operations(config: ApiConfig, reactor: Any, deltas: DeltaMaker) -> list[Operation]:
    handlers = Releases(reactor, deltas)
    return [
        Operation("POST", "/v1/releases", "uploadRelease", "Upload a signed RAUC bundle",
                  handlers.upload, scope="admin", body={"type": "string", "format": "binary"},
                  body_media="application/octet-stream", response=SCHEMA, status=201,
                  errors=(422, 501),
                  description=(
                      "The body is the `.raucb` file. Refused with RAUC's reason (422) if its "
                      "signature does not verify against the configured keyring or its "
                      "`compatible` is not one this cloud serves; 409 if the version is "
                      "there already; 413 over `max_bundle_mb`. Deltas from earlier releases "
                      "are then made in the background (`deltas[].state`)."
                  )),
        Operation("GET", "/v1/releases", "listReleases", "Releases, newest first",
                  handlers.list_releases, params=page_params(config.max_page, FILTERS),
                  response=paging.schema(SCHEMA)),
        Operation("GET", "/v1/releases/{release_id}", "getRelease", "One release and its deltas",
                  handlers.one, params=(RELEASE_PATH,), response=SCHEMA),
    ]
