"""``/v1/commands``: commands to meters and units; create one, follow its state.

A command is stored in PostgreSQL first (``commands``, migration 0007) and the
answer says so (``201``, state ``queued``); delivery is ``gridcloud serve``'s
job (gridcloud.commands), woken by the insert's NOTIFY.  Every later state
(sent, acknowledged, succeeded, failed with its reason, expired) is a row
update that this API reads, and an event ``command`` on the live feed.

Targets: relay and read commands name a meter (its edge comes from
``meters``, so the meter must have reported at least once); configuration,
reboot and upload-now name an edge.  ``idempotency_key``: the same key (per API key) twice
makes one command, and the second answer is the first command, provided the
request is the same (a different one with the same key is a 409).

Tests: tests/cloud/test_api_commands.py, tests/system/test_commands_e2e.py.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from gridwire import MAX_PAYLOAD

from ..config import ApiConfig
from ..params import EDGE_ID_PATTERN, Param, page_params, parse_time, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from . import paging

ACTIONS = ("relay_open", "relay_close", "read_now", "set_config", "reboot", "upload_now")
METER_ACTIONS = ("relay_open", "relay_close", "read_now")
#: what a listed command can be: also the prepaid allowances the pipeline sends (never posted)
LISTED_ACTIONS = (*ACTIONS, "set_allowance")
STATES = ("queued", "sent", "acknowledged", "succeeded", "failed", "expired")

#: The unit settings a set_config command may change (docs/edge.md, "Commands"): bounds.
SETTINGS: dict[str, tuple[float, float, str]] = {
    "uplink.heartbeat": (5, 3600, "Seconds of silence before the unit sends a Ping."),
    "uplink.batch_linger": (0, 600, "Seconds a partial batch of readings waits before upload "
                            "(the upload interval)."),
}

#: Expiry when the request gives none, and the furthest one accepted.
DEFAULT_EXPIRY = datetime.timedelta(hours=24)
MAX_EXPIRY = datetime.timedelta(days=30)

IDEMPOTENCY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

_COLUMNS = """
id, edge_id, meter_id, action, params::text, origin, state, reason, idempotency_key,
deliveries, created_at, expires_at, sent_at, acknowledged_at, succeeded_at, failed_at,
expired_at, updated_at
"""

INSERT_SQL = f"""
INSERT INTO commands (edge_id, meter_id, action, params, created_by, idempotency_key,
                      expires_at)
VALUES (%(edge)s, %(meter)s, %(action)s, %(params)s::jsonb, %(by)s, %(key)s, %(expires)s)
ON CONFLICT (created_by, idempotency_key) DO NOTHING
RETURNING {_COLUMNS}
"""

BY_KEY_SQL = f"SELECT {_COLUMNS} FROM commands WHERE created_by = %s AND idempotency_key = %s"

ONE_SQL = f"""
SELECT {_COLUMNS} FROM commands
 WHERE id = %(id)s AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
"""

LIST_SQL = f"""
SELECT {_COLUMNS} FROM commands
 WHERE (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
   AND (%(edge_id)s::text IS NULL OR edge_id = %(edge_id)s)
   AND (%(meter_id)s::bigint IS NULL OR meter_id = %(meter_id)s)
   AND (%(state)s::text IS NULL OR state = %(state)s)
   AND (%(action)s::text IS NULL OR action = %(action)s)
   AND (%(after)s::bigint IS NULL OR id < %(after)s)
 ORDER BY id DESC LIMIT %(limit)s
"""

METER_EDGE_SQL = """
SELECT edge_id FROM meters
 WHERE meter_id = %(meter)s AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
"""

EDGE_SQL = """
SELECT edge_id FROM edges
 WHERE edge_id = %(edge)s AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
"""

_TS = {"type": ["string", "null"], "format": "date-time"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "edge_id", "meter_id", "action", "config", "origin", "state", "reason",
                 "idempotency_key", "deliveries", "created_at", "expires_at", "sent_at",
                 "acknowledged_at", "succeeded_at", "failed_at", "expired_at", "updated_at"],
    "properties": {
        "id": {"type": "integer"},
        "edge_id": {"type": "string"},
        "meter_id": {"type": ["integer", "null"]},
        "action": {"type": "string", "enum": list(LISTED_ACTIONS),
                   "description": "set_allowance: a prepaid meter's allowance, sent by the "
                                  "pipeline (docs/pipeline.md); not accepted by POST."},
        "config": {"type": ["object", "null"],
                   "description": "The settings of a set_config command."},
        "origin": {"type": "string", "enum": ["api", "unit", "pipeline"],
                   "description": ("unit: an operator action on the unit's own page, or the "
                                  "unit's own prepaid credit decision; pipeline: prepaid "
                                  "credit ran out or was topped up, or a new allowance.")},
        "state": {"type": "string", "enum": list(STATES)},
        "reason": {"type": ["string", "null"],
                   "description": "Why it failed or expired, or what the unit reported."},
        "idempotency_key": {"type": ["string", "null"]},
        "deliveries": {"type": "integer", "description": "Times it was sent to the unit."},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "sent_at": _TS,
        "acknowledged_at": _TS,
        "succeeded_at": _TS,
        "failed_at": _TS,
        "expired_at": _TS,
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["action"],
    "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "meter_id": {"type": "integer", "minimum": 1, "maximum": 2**32 - 1,
                     "description": "The meter of relay_open, relay_close and read_now."},
        "edge_id": {"type": "string", "pattern": EDGE_ID_PATTERN,
                    "description": "The unit of set_config and reboot."},
        "expires_at": {"type": "string", "format": "date-time",
                       "description": "Not executed after this instant (default: in 24 h, "
                                      "at most 30 days ahead)."},
        "idempotency_key": {"type": "string", "pattern": IDEMPOTENCY_PATTERN,
                            "description": "The same key twice makes one command."},
        "config": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "description": "set_config: the unit settings to change.",
            "properties": {
                name: {"type": "number", "minimum": low, "maximum": high, "description": text}
                for name, (low, high, text) in SETTINGS.items()
            },
        },
    },
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    (cid, edge_id, meter_id, action, params, origin, state, reason, key, deliveries, created,
     expires, sent, acked, succeeded, failed, expired, updated) = row
    config = json.loads(params) if action == "set_config" and params else None
    return {
        "id": cid,
        "edge_id": edge_id,
        "meter_id": meter_id,
        "action": action,
        "config": config,
        "origin": origin,
        "state": state,
        "reason": reason,
        "idempotency_key": key,
        "deliveries": deliveries,
        "created_at": rfc3339(created),
        "expires_at": rfc3339(expires),
        "sent_at": rfc3339(sent),
        "acknowledged_at": rfc3339(acked),
        "succeeded_at": rfc3339(succeeded),
        "failed_at": rfc3339(failed),
        "expired_at": rfc3339(expired),
        "updated_at": rfc3339(updated),
    }


async def create(call: Call) -> Any:
    body = call.body  # its shape is checked against BODY already
    action = body["action"]
    now = datetime.datetime.fromtimestamp(call.clock.seconds(), datetime.UTC)
    expires = now + DEFAULT_EXPIRY
    if "expires_at" in body:
        expires = parse_time(body["expires_at"], Param("expires_at", "date-time", ""))
        if expires <= now:
            raise Problem("bad-body", "expires_at: must be in the future")
        if expires > now + MAX_EXPIRY:
            raise Problem("bad-body", "expires_at: at most 30 days ahead")
    config = body.get("config")
    if (action == "set_config") != (config is not None):
        raise Problem("bad-body", "config: required for set_config, and only for it")
    meter = body.get("meter_id")
    edge = body.get("edge_id")
    if action in METER_ACTIONS:
        if meter is None:
            raise Problem("bad-body", f"meter_id: required for {action}")
        rows = await call.db.rows(METER_EDGE_SQL, {"meter": meter, "edges": call.edges()})
        if not rows:
            raise Problem("bad-body", f"meter_id: no meter {meter} (it must have reported once)")
        if edge is not None and edge != rows[0][0]:
            raise Problem("bad-body", f"edge_id: meter {meter} is behind edge {rows[0][0]}")
        edge = rows[0][0]
    else:
        if meter is not None:
            raise Problem("bad-body", f"meter_id: {action} targets a unit (edge_id), not a meter")
        if edge is None:
            raise Problem("bad-body", f"edge_id: required for {action}")
        if not await call.db.rows(EDGE_SQL, {"edge": edge, "edges": call.edges()}):
            raise Problem("bad-body", f"edge_id: no edge {edge}")
    params = json.dumps(config or {}, separators=(",", ":"), sort_keys=True)
    if len(params) > MAX_PAYLOAD:  # cannot happen with today's settings; kept for new ones
        raise Problem("bad-body", f"config: at most {MAX_PAYLOAD} bytes as JSON")
    key = body.get("idempotency_key")
    values = {"edge": edge, "meter": meter, "action": action, "params": params,
              "by": call.caller.name, "key": key, "expires": expires}
    rows = await call.db.rows(INSERT_SQL, values)
    if rows:
        return item(rows[0])
    # The idempotency key was used already (by this API key): the same request, or a conflict.
    rows = await call.db.rows(BY_KEY_SQL, (call.caller.name, key))
    if not rows:  # the other command was made by a key that may not see it: cannot happen
        raise Problem("conflict", "idempotency_key: used already")
    existing = item(rows[0])
    if (existing["action"], existing["meter_id"], existing["edge_id"], existing["config"]) != (
            action, meter, edge, config):
        raise Problem("conflict", f"idempotency_key: used already for command {existing['id']} "
                      "with a different request")
    return existing


async def one(call: Call) -> Any:
    rows = await call.db.rows(ONE_SQL, {"id": call.path["command_id"], "edges": call.edges()})
    if not rows:
        raise Problem("not-found", f"no command {call.path['command_id']}")
    return item(rows[0])


async def list_commands(call: Call) -> Any:
    query, after = paging.after(call.query, "commands", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(LIST_SQL, {
        "edges": call.edges(), "edge_id": call.query["edge_id"],
        "meter_id": call.query["meter_id"], "state": call.query["state"],
        "action": call.query["action"], "after": after[0] if after else None,
        "limit": limit + 1,
    })
    return paging.page(rows, limit, query, lambda r: [r[0]], item)


COMMAND_PATH = Param("command_id", "integer", "Command id.", where="path",
                     minimum=1, maximum=2**63 - 1)

FILTERS = (
    Param("edge_id", "string", "Only this edge's commands.", pattern=EDGE_ID_PATTERN),
    Param("meter_id", "integer", "Only this meter's commands.", minimum=0, maximum=2**32 - 1),
    Param("state", "string", "Only commands in this state.", enum=STATES),
    Param("action", "string", "Only this action.", enum=LISTED_ACTIONS),
)


def operations(config: ApiConfig) -> list[Operation]:
    return [
        Operation("POST", "/v1/commands", "createCommand",
                  "Queue a command for a meter or a unit", create, scope="write",
                  body=BODY, response=SCHEMA, status=201,
                  description=(
                      "Stored at once (state `queued`), delivered to the unit as soon as it is "
                      "connected. With an `idempotency_key` used before by the same API key, "
                      "the answer is that earlier command (409 if the request differs)."
                  )),
        Operation("GET", "/v1/commands", "listCommands", "Commands, newest first",
                  list_commands, params=page_params(config.max_page, FILTERS),
                  response=paging.schema(SCHEMA)),
        Operation("GET", "/v1/commands/{command_id}", "getCommand",
                  "One command and its state", one, params=(COMMAND_PATH,), response=SCHEMA),
    ]
