"""``/v1/edges``: every edge unit, online now or not, with its counters.

"Online" is ``edges.session_token`` (written by the serve nodes, gridcloud.presence);
"last contact" is the later of the last connection and the last stored upload.
"Bytes up/down today" are the TLS bytes on the socket of the edge's connections
this UTC day, as every serve node counted and wrote them (``edge_traffic``,
gridcloud.traffic): late by at most a node's ``traffic_flush_interval``.
``/v1/edges/{edge_id}/traffic`` pages through the edge's earlier days.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_traffic.py.
"""

from __future__ import annotations

from typing import Any

from ..config import ApiConfig
from ..params import EDGE_PATH, FROM, TO, page_params, rfc3339, time_range
from ..problems import Problem
from ..routes import Call, Operation
from . import paging

_COLUMNS = """
e.edge_id, session_token IS NOT NULL, greatest(last_connected_at, last_batch_at), last_peer,
firmware_version, boot_slot, readings_total, seq_gaps_total, last_seq, revoked_at,
revoked_reason, first_seen_at, coalesce(t.bytes_up, 0), coalesce(t.bytes_down, 0), e.tags
"""

#: the edges and today's (UTC) traffic row of each
_FROM = """
edges e LEFT JOIN edge_traffic t
  ON t.edge_id = e.edge_id AND t.day = (now() AT TIME ZONE 'UTC')::date
"""

_VISIBLE = "(%(edges)s::text[] IS NULL OR e.edge_id = ANY(%(edges)s::text[]))"

LIST_SQL = f"""
SELECT {_COLUMNS} FROM {_FROM}
 WHERE {_VISIBLE} AND (%(after)s::text IS NULL OR e.edge_id > %(after)s)
 ORDER BY e.edge_id LIMIT %(limit)s
"""

ONE_SQL = f"SELECT {_COLUMNS} FROM {_FROM} WHERE e.edge_id = %(edge_id)s AND {_VISIBLE}"

#: days newest first; ``from``/``to`` bound the day's start (00:00 UTC)
TRAFFIC_SQL = """
SELECT day, bytes_up, bytes_down FROM edge_traffic
 WHERE edge_id = %(edge_id)s
   AND (%(from)s::timestamptz IS NULL OR day::timestamp AT TIME ZONE 'UTC' >= %(from)s)
   AND (%(to)s::timestamptz IS NULL OR day::timestamp AT TIME ZONE 'UTC' < %(to)s)
   AND (%(before)s::date IS NULL OR day < %(before)s::date)
 ORDER BY day DESC LIMIT %(limit)s
"""

_TS = {"type": ["string", "null"], "format": "date-time"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["edge_id", "online", "last_contact", "peer", "firmware_version", "boot_slot",
                 "readings_total", "sequence_gaps", "last_seq", "revoked", "revoked_at",
                 "revoked_reason", "first_seen", "bytes_up_today", "bytes_down_today", "tags"],
    "properties": {
        "edge_id": {"type": "string"},
        "online": {"type": "boolean", "description": "Held by a gridcloud serve node now."},
        "last_contact": _TS,
        "peer": {"type": ["string", "null"], "description": "Address of the last connection."},
        "firmware_version": {"type": ["string", "null"]},
        "boot_slot": {"type": ["string", "null"]},
        "readings_total": {"type": "integer"},
        "sequence_gaps": {"type": "integer",
                          "description": "Journal records the edge skipped (lost on the edge)."},
        "last_seq": {"type": "integer", "description": "Journal high-water mark stored."},
        "revoked": {"type": "boolean"},
        "revoked_at": _TS,
        "revoked_reason": {"type": ["string", "null"]},
        "first_seen": {"type": "string", "format": "date-time"},
        "bytes_up_today": {
            "type": "integer", "minimum": 0,
            "description": "Bytes the edge sent on its connections this UTC day (TLS bytes on "
                           "the socket, handshakes included), as written by the serve nodes "
                           "(late by at most their traffic_flush_interval)."},
        "bytes_down_today": {
            "type": "integer", "minimum": 0,
            "description": "Bytes the cloud sent to the edge this UTC day (same counting)."},
        "tags": {"type": "array", "items": {"type": "string"},
                 "description": "Set with PUT /v1/edges/{edge_id}/tags; rollouts target them."},
    },
}

TRAFFIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["day", "bytes_up", "bytes_down"],
    "properties": {
        "day": {"type": "string", "format": "date", "description": "UTC day."},
        "bytes_up": {"type": "integer", "minimum": 0,
                     "description": "TLS bytes on the socket from the edge."},
        "bytes_down": {"type": "integer", "minimum": 0,
                       "description": "TLS bytes on the socket to the edge."},
    },
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    (edge_id, online, contact, peer, firmware, slot, total, gaps, last_seq, revoked_at,
     reason, first_seen, up, down, tags) = row
    return {
        "edge_id": edge_id,
        "online": bool(online),
        "last_contact": rfc3339(contact),
        "peer": peer,
        "firmware_version": firmware,
        "boot_slot": slot,
        "readings_total": total,
        "sequence_gaps": gaps,
        "last_seq": last_seq,
        "revoked": revoked_at is not None,
        "revoked_at": rfc3339(revoked_at),
        "revoked_reason": reason,
        "first_seen": rfc3339(first_seen),
        "bytes_up_today": up,
        "bytes_down_today": down,
        "tags": list(tags),
    }


async def list_edges(call: Call) -> Any:
    query, after = paging.after(call.query, "edges", [str])
    limit = call.query["limit"]
    rows = await call.db.rows(LIST_SQL, {"edges": call.edges(), "limit": limit + 1,
                                         "after": after[0] if after else None})
    return paging.page(rows, limit, query, lambda r: [r[0]], item)


async def one_edge(call: Call) -> Any:
    return item(await visible_edge(call, call.path["edge_id"]))


async def traffic_of_edge(call: Call) -> Any:
    edge_id = call.path["edge_id"]
    time_range(call.query)
    await visible_edge(call, edge_id)
    query, before = paging.after({**call.query, "edge": edge_id}, "edge-traffic", [str])
    limit = call.query["limit"]
    rows = await call.db.rows(TRAFFIC_SQL, {
        "edge_id": edge_id, "from": call.query["from"], "to": call.query["to"],
        "before": before[0] if before else None, "limit": limit + 1})
    return paging.page(rows, limit, query, lambda r: [r[0].isoformat()], _traffic_item)


def _traffic_item(row: tuple[Any, ...]) -> dict[str, Any]:
    day, up, down = row
    return {"day": day.isoformat(), "bytes_up": up, "bytes_down": down}


async def visible_edge(call: Call, edge_id: str) -> tuple[Any, ...]:
    """The edge's row, or a 404 problem if it does not exist or the key may not see it."""
    rows = await call.db.rows(ONE_SQL, {"edge_id": edge_id, "edges": call.edges()})
    if not rows:
        raise Problem("not-found", f"no edge {edge_id!r}")
    return rows[0]


def operations(config: ApiConfig) -> list[Operation]:
    return [
        Operation("GET", "/v1/edges", "listEdges", "List edges", list_edges,
                  params=page_params(config.max_page), response=paging.schema(SCHEMA)),
        Operation("GET", "/v1/edges/{edge_id}", "getEdge", "One edge", one_edge,
                  params=(EDGE_PATH,), response=SCHEMA),
        Operation("GET", "/v1/edges/{edge_id}/traffic", "listEdgeTraffic",
                  "Bytes on one edge's connections per UTC day, newest first", traffic_of_edge,
                  params=page_params(config.max_page, (EDGE_PATH, FROM, TO)),
                  response=paging.schema(TRAFFIC_SCHEMA),
                  description="A day is listed when its start (00:00 UTC) is in "
                              "[from, to). Counted by the serve nodes below TLS."),
    ]
