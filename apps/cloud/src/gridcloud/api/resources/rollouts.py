"""``/v1/rollouts``: a release offered to a set of units in waves; and the tags that pick them.

A rollout names a release and its units (by id, by tag, or a stable percentage
of the fleet: the units whose ``md5(edge id)`` falls in the first ``percent`` of
100 buckets, so 10 % today are among 20 % tomorrow).  Its units get a wave
each, in groups of ``wave_size`` (by the same hash: waves mix the fleet).  The
rows are written and the serve nodes woken (``NOTIFY gridcloud_rollouts``) in
one statement; from there on the rollout moves by itself, in the transactions
that record the units' reports (``rollout_step()`` of migration 0010): the next
wave starts when every unit of the started waves is final, and the rollout
pauses itself when more than ``max_failures`` units failed or rolled back.

Pause, resume and cancel are ``rollout_control()`` under the same row lock.
A unit is in one unfinished rollout at a time (a unique index); a rollout that
would take a unit from another one is a 409 naming it.

Tests: tests/cloud/test_cloud_rollouts.py.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2

from ..config import ApiConfig
from ..params import EDGE_ID_PATTERN, EDGE_PATH, Param, page_params, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from . import paging
from .edges import visible_edge

ROLLOUT_STATES = ("running", "paused", "cancelled", "completed")
UNIT_STATES = ("pending", "offered", "downloading", "verifying", "installing", "rebooting",
               "healthy", "rolled_back", "failed", "cancelled")
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: Stable bucket 0..99 of an edge id (md5: the same in every PostgreSQL version).
_BUCKET = "(('x' || substr(md5(e.edge_id), 1, 8))::bit(32)::bigint %% 100)"

_CHOOSE = f"""
SELECT e.edge_id FROM edges e
 WHERE e.revoked_at IS NULL
   AND (%(visible)s::text[] IS NULL OR e.edge_id = ANY(%(visible)s::text[]))
   AND (%(ids)s::text[] IS NULL OR e.edge_id = ANY(%(ids)s::text[]))
   AND (%(tag)s::text IS NULL OR %(tag)s = ANY(e.tags))
   AND (%(percent)s::int IS NULL OR {_BUCKET} < %(percent)s)
"""

BUSY_SQL = f"""
SELECT u.edge_id, u.rollout_id FROM rollout_units u
 WHERE u.edge_id IN ({_CHOOSE})
   AND u.state NOT IN ('healthy', 'rolled_back', 'failed', 'cancelled')
 ORDER BY u.edge_id LIMIT 5
"""

CREATE_SQL = f"""
WITH chosen AS (
    SELECT edge_id, row_number() OVER (ORDER BY md5(edge_id), edge_id) - 1 AS n
      FROM ({_CHOOSE}) c),
r AS (
    INSERT INTO rollouts (release_id, target, wave_size, max_failures, created_by)
    SELECT %(release)s, %(target)s::jsonb, %(wave_size)s, %(max_failures)s, %(by)s
     WHERE EXISTS (SELECT 1 FROM chosen)
    RETURNING id, wave_size),
u AS (
    INSERT INTO rollout_units (rollout_id, edge_id, wave, size)
    SELECT r.id, c.edge_id, c.n / r.wave_size, rel.size
      FROM r, chosen c, releases rel WHERE rel.id = %(release)s
    RETURNING rollout_id)
SELECT r.id, (SELECT count(*) FROM u), pg_notify('gridcloud_rollouts', r.id::text) FROM r
"""

_COUNTS = """
(SELECT json_object_agg(state, n) FROM
   (SELECT state, count(*) AS n FROM rollout_units WHERE rollout_id = o.id GROUP BY state) s)
"""

_COLUMNS = f"""
o.id, o.release_id, rel.version, rel.compatible, o.target::text, o.wave_size, o.max_failures,
o.state, o.paused_reason, o.current_wave,
(SELECT coalesce(max(wave), 0) + 1 FROM rollout_units WHERE rollout_id = o.id),
o.created_by, o.created_at, o.updated_at, o.finished_at, {_COUNTS}
"""

_VISIBLE = """
(%(edges)s::text[] IS NULL OR EXISTS (SELECT 1 FROM rollout_units v
   WHERE v.rollout_id = o.id AND v.edge_id = ANY(%(edges)s::text[])))
"""

ONE_SQL = f"""
SELECT {_COLUMNS} FROM rollouts o JOIN releases rel ON rel.id = o.release_id
 WHERE o.id = %(id)s AND {_VISIBLE}
"""

LIST_SQL = f"""
SELECT {_COLUMNS} FROM rollouts o JOIN releases rel ON rel.id = o.release_id
 WHERE {_VISIBLE}
   AND (%(state)s::text IS NULL OR o.state = %(state)s)
   AND (%(after)s::bigint IS NULL OR o.id < %(after)s)
 ORDER BY o.id DESC LIMIT %(limit)s
"""

UNITS_SQL = """
SELECT edge_id, wave, state, received, size, detail, updated_at FROM rollout_units
 WHERE rollout_id = %(id)s AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
 ORDER BY wave, edge_id
"""

UNIT_SQL = """
SELECT u.rollout_id, u.edge_id, u.wave, u.state, u.received, u.size, u.detail, u.updated_at
  FROM rollout_units u WHERE u.id = %s
"""

CONTROL_SQL = "SELECT rollout_control(%(id)s, %(action)s, %(reason)s)"

RELEASE_SQL = "SELECT id FROM releases WHERE id = %s"

TAGS_SQL = """
UPDATE edges SET tags = %(tags)s::text[] WHERE edge_id = %(edge_id)s RETURNING tags
"""

_TS = {"type": ["string", "null"], "format": "date-time"}

UNIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["edge_id", "wave", "state", "received", "size", "detail", "updated_at"],
    "properties": {
        "edge_id": {"type": "string"},
        "wave": {"type": "integer", "minimum": 0},
        "state": {"type": "string", "enum": list(UNIT_STATES)},
        "received": {"type": "integer", "minimum": 0,
                     "description": "Bytes downloaded so far (while downloading)."},
        "size": {"type": "integer", "minimum": 0,
                 "description": "Bytes to download: the bundle, or the delta the unit took."},
        "detail": {"type": "string",
                   "description": "The unit's reason (failed, rolled_back) or last step."},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "release_id", "version", "compatible", "target", "wave_size",
                 "max_failures", "state", "paused_reason", "current_wave", "waves",
                 "created_by", "created_at", "updated_at", "finished_at", "counts"],
    "properties": {
        "id": {"type": "integer"},
        "release_id": {"type": "integer"},
        "version": {"type": "string"},
        "compatible": {"type": "string"},
        "target": {"type": "object", "description": "As it was given."},
        "wave_size": {"type": "integer"},
        "max_failures": {"type": "integer"},
        "state": {"type": "string", "enum": list(ROLLOUT_STATES)},
        "paused_reason": {"type": ["string", "null"]},
        "current_wave": {"type": "integer", "description": "The last wave started (from 0)."},
        "waves": {"type": "integer"},
        "created_by": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "finished_at": _TS,
        "counts": {"type": "object", "description": "Units by state (every state listed).",
                   "additionalProperties": False,
                   "properties": {s: {"type": "integer"} for s in UNIT_STATES},
                   "required": list(UNIT_STATES)},
    },
}

ONE_SCHEMA: dict[str, Any] = {
    **SCHEMA,
    "required": [*SCHEMA["required"], "units"],
    "properties": {**SCHEMA["properties"],
                   "units": {"type": "array", "items": UNIT_SCHEMA}},
}

#: A rollout unit on the live feed (event ``rollout``).
FEED_SCHEMA: dict[str, Any] = {
    **UNIT_SCHEMA,
    "required": ["rollout_id", *UNIT_SCHEMA["required"]],
    "properties": {"rollout_id": {"type": "integer"}, **UNIT_SCHEMA["properties"]},
}

BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["release_id", "target"],
    "properties": {
        "release_id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
        "target": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "description": "Exactly one of: edges, tag, percent.",
            "properties": {
                "edges": {"type": "array", "minItems": 1, "maxItems": 10000,
                          "uniqueItems": True,
                          "items": {"type": "string", "pattern": EDGE_ID_PATTERN}},
                "tag": {"type": "string", "pattern": TAG_PATTERN},
                "percent": {"type": "integer", "minimum": 1, "maximum": 100,
                            "description": "A stable share of the fleet (by edge id hash)."},
            },
        },
        "wave_size": {"type": "integer", "minimum": 1, "maximum": 100000,
                      "description": "Units per wave (default 1)."},
        "max_failures": {"type": "integer", "minimum": 0, "maximum": 100000,
                         "description": "Failed or rolled-back units tolerated before the "
                                        "rollout pauses itself (default 0)."},
    },
}

TAGS_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tags"],
    "properties": {
        "tags": {"type": "array", "maxItems": 32, "uniqueItems": True,
                 "items": {"type": "string", "pattern": TAG_PATTERN}},
    },
}

TAGS_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["edge_id", "tags"],
    "properties": {"edge_id": {"type": "string"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    (rid, release_id, version, compatible, target, wave_size, max_failures, state, reason,
     current, waves, by, created, updated, finished, counts) = row
    return {
        "id": rid, "release_id": release_id, "version": version, "compatible": compatible,
        "target": json.loads(target), "wave_size": wave_size, "max_failures": max_failures,
        "state": state, "paused_reason": reason, "current_wave": current, "waves": waves,
        "created_by": by, "created_at": rfc3339(created), "updated_at": rfc3339(updated),
        "finished_at": rfc3339(finished),
        "counts": {s: int((counts or {}).get(s, 0)) for s in UNIT_STATES},
    }


def unit_item(row: tuple[Any, ...]) -> dict[str, Any]:
    edge_id, wave, state, received, size, detail, updated = row
    return {"edge_id": edge_id, "wave": wave, "state": state, "received": received,
            "size": size, "detail": detail, "updated_at": rfc3339(updated)}


def feed_item(row: tuple[Any, ...]) -> dict[str, Any]:
    """A rollout unit as the live feed sends it (a UNIT_SQL row)."""
    return {"rollout_id": row[0], **unit_item(row[1:])}


async def create(call: Call) -> Any:
    body = call.body
    target = body["target"]
    if len(target) != 1:
        raise Problem("bad-body", "target: exactly one of edges, tag, percent")
    if not await call.db.rows(RELEASE_SQL, (body["release_id"],)):
        raise Problem("bad-body", f"release_id: no release {body['release_id']}")
    choose = {"visible": call.edges(), "ids": target.get("edges"), "tag": target.get("tag"),
              "percent": target.get("percent")}
    if "edges" in target:
        found = {r[0] for r in await call.db.rows(_CHOOSE, choose)}
        missing = [e for e in target["edges"] if e not in found]
        if missing:
            raise Problem("bad-body", f"target.edges: no edge {', '.join(missing[:5])} "
                                      "(unknown, revoked, or not visible to this key)")
    busy = await call.db.rows(BUSY_SQL, choose)
    if busy:
        raise Problem("conflict", "units already in an unfinished rollout: " + ", ".join(
            f"{edge} (rollout {rollout})" for edge, rollout in busy))
    try:
        rows = await call.db.rows(CREATE_SQL, {
            **choose, "release": body["release_id"], "target": json.dumps(target),
            "wave_size": body.get("wave_size", 1), "max_failures": body.get("max_failures", 0),
            "by": call.caller.name})
    except psycopg2.errors.UniqueViolation:  # another rollout took a unit meanwhile
        raise Problem("conflict", "a unit joined another rollout meanwhile: try again") from None
    if not rows:
        raise Problem("bad-body", "target: no unit matches")
    return await _one(call, rows[0][0])


async def _one(call: Call, rollout_id: int) -> dict[str, Any]:
    args = {"id": rollout_id, "edges": call.edges()}
    rows = await call.db.rows(ONE_SQL, args)
    if not rows:
        raise Problem("not-found", f"no rollout {rollout_id}")
    out = item(rows[0])
    out["units"] = [unit_item(r) for r in await call.db.rows(UNITS_SQL, args)]
    return out


async def one(call: Call) -> Any:
    return await _one(call, call.path["rollout_id"])


async def list_rollouts(call: Call) -> Any:
    query, after = paging.after(call.query, "rollouts", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(LIST_SQL, {
        "edges": call.edges(), "state": call.query["state"],
        "after": after[0] if after else None, "limit": limit + 1})
    return paging.page(rows, limit, query, lambda r: [r[0]], item)


def _control(action: str) -> Any:
    async def handler(call: Call) -> Any:
        rollout_id = call.path["rollout_id"]
        await _one(call, rollout_id)  # 404 for a rollout the key may not see
        reason = {"pause": f"paused by {call.caller.name}",
                  "cancel": f"cancelled by {call.caller.name}"}.get(action, "")
        rows = await call.db.rows(CONTROL_SQL, {"id": rollout_id, "action": action,
                                                "reason": reason})
        state = rows[0][0]
        if state == "completed" or (state == "cancelled" and action != "cancel"):
            raise Problem("conflict", f"rollout {rollout_id} is {state}")
        return await _one(call, rollout_id)
    return handler


async def put_tags(call: Call) -> Any:
    edge_id = call.path["edge_id"]
    await visible_edge(call, edge_id)
    tags = sorted(call.body["tags"])
    rows = await call.db.rows(TAGS_SQL, {"tags": tags, "edge_id": edge_id})
    return {"edge_id": edge_id, "tags": list(rows[0][0])}


ROLLOUT_PATH = Param("rollout_id", "integer", "Rollout id.", where="path",
                     minimum=1, maximum=2**63 - 1)

FILTERS = (Param("state", "string", "Only rollouts in this state.", enum=ROLLOUT_STATES),)


def operations(config: ApiConfig) -> list[Operation]:
    ops = [
        Operation("POST", "/v1/rollouts", "createRollout",
                  "Roll a release out to units, in waves", create, scope="admin",
                  body=BODY, response=ONE_SCHEMA, status=201,
                  description=(
                      "Target exactly one of: `edges` (ids), `tag`, `percent` (a stable share "
                      "of the fleet). Units are split into waves of `wave_size`; a wave starts "
                      "when every unit of the earlier ones is healthy or failed, and the "
                      "rollout pauses itself past `max_failures`. 409 if a unit is in another "
                      "unfinished rollout."
                  )),
        Operation("GET", "/v1/rollouts", "listRollouts", "Rollouts, newest first",
                  list_rollouts, params=page_params(config.max_page, FILTERS),
                  response=paging.schema(SCHEMA)),
        Operation("GET", "/v1/rollouts/{rollout_id}", "getRollout",
                  "One rollout with every unit's state", one, params=(ROLLOUT_PATH,),
                  response=ONE_SCHEMA),
    ]
    for action, text in (("pause", "Pause: no new wave starts (units already going go on)"),
                         ("resume", "Resume a paused rollout (accepting its failures so far)"),
                         ("cancel", "Cancel: units not yet finished are offered nothing more")):
        ops.append(Operation("POST", f"/v1/rollouts/{{rollout_id}}/{action}",
                             f"{action}Rollout", text, _control(action), scope="admin",
                             params=(ROLLOUT_PATH,), response=ONE_SCHEMA, errors=(409,)))
    ops.append(Operation("PUT", "/v1/edges/{edge_id}/tags", "putEdgeTags",
                         "Replace an edge's tags (used to target rollouts)", put_tags,
                         scope="admin", params=(EDGE_PATH,), body=TAGS_BODY,
                         response=TAGS_SCHEMA))
    return ops
