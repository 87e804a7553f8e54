"""``/v1/keys``: managing API keys over the API (scope ``admin``), as ``gridcloud apikey`` does.

Tests: tests/cloud/test_api_auth.py, tests/cloud/test_api_bad_input.py.
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from .. import keys
from ..config import ApiConfig
from ..params import EDGE_ID_PATTERN, KEY_NAME_PATTERN, Param, parse_time, rfc3339
from ..problems import Problem
from ..routes import Call, Operation

_TS = {"type": ["string", "null"], "format": "date-time"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "prefix", "scopes", "edges", "created_at", "last_used_at",
                 "expires_at", "revoked_at"],
    "properties": {
        "name": {"type": "string"},
        "prefix": {"type": "string", "description": "The key's first characters."},
        "scopes": {"type": "array", "items": {"type": "string", "enum": list(keys.SCOPES)}},
        "edges": {"type": ["array", "null"], "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "last_used_at": _TS,
        "expires_at": _TS,
        "revoked_at": _TS,
    },
}

CREATED_SCHEMA: dict[str, Any] = {
    **SCHEMA,
    "required": [*SCHEMA["required"], "key"],
    "properties": {**SCHEMA["properties"],
                   "key": {"type": "string", "description": "The key: shown this once only."}},
}

BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "scopes"],
    "properties": {
        "name": {"type": "string", "pattern": KEY_NAME_PATTERN},
        "scopes": {"type": "array", "minItems": 1, "maxItems": 3, "uniqueItems": True,
                   "items": {"type": "string", "enum": list(keys.SCOPES)}},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "edges": {"type": ["array", "null"], "maxItems": 10000,
                  "items": {"type": "string", "pattern": EDGE_ID_PATTERN}},
    },
}


def item(info: keys.KeyInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "prefix": info.prefix,
        "scopes": list(info.scopes),
        "edges": list(info.edges) if info.edges is not None else None,
        "created_at": rfc3339(info.created_at),
        "last_used_at": rfc3339(info.last_used_at),
        "expires_at": rfc3339(info.expires_at),
        "revoked_at": rfc3339(info.revoked_at),
    }


async def create(call: Call) -> Any:
    body = call.body  # checked against BODY already
    expires = body.get("expires_at")
    expires_at = parse_time(expires, Param("expires_at", "date-time", "")) if expires else None
    key = keys.new_key()
    scopes = keys.check_scopes(body["scopes"])
    try:
        await call.db.run(keys.INSERT_SQL, (body["name"], keys.digest(key), key[:10],
                                            list(scopes), body.get("edges"), expires_at))
    except psycopg2.errors.UniqueViolation:
        raise Problem("conflict", f"a key named {body['name']!r} exists already") from None
    rows = await call.db.rows(keys.LIST_SQL.replace("ORDER BY", "WHERE name = %s ORDER BY"),
                              (body["name"],))
    return {**item(keys.row_to_info(rows[0])), "key": key}


async def list_all(call: Call) -> Any:
    rows = await call.db.rows(keys.LIST_SQL)
    return {"items": [item(keys.row_to_info(r)) for r in rows]}


async def revoke(call: Call) -> Any:
    await call.db.run(keys.REVOKE_SQL, (call.path["name"],))
    call.auth.forget(call.path["name"])  # at once here; other processes within their cache TTL
    return None


NAME_PATH = Param("name", "string", "Key name.", where="path", pattern=KEY_NAME_PATTERN)


def operations(config: ApiConfig) -> list[Operation]:
    return [
        Operation("POST", "/v1/keys", "createKey", "Create an API key (shown once)", create,
                  scope="admin", body=BODY, response=CREATED_SCHEMA, status=201),
        Operation("GET", "/v1/keys", "listKeys", "List API keys (never the keys themselves)",
                  list_all, scope="admin",
                  response={"type": "object", "required": ["items"],
                            "additionalProperties": False,
                            "properties": {"items": {"type": "array", "items": SCHEMA}}}),
        Operation("DELETE", "/v1/keys/{name}", "revokeKey", "Revoke an API key at once",
                  revoke, scope="admin", params=(NAME_PATH,), status=204),
    ]
