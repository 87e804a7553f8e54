"""``/v1/edges``: every edge unit, online now or not, with its counters.

"Online" is ``edges.session_token`` (written by the serve nodes, gridcloud.presence);
"last contact" is the later of the last connection and the last stored upload.

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

from typing import Any

from ..config import ApiConfig
from ..params import EDGE_PATH, page_params, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from . import paging

_COLUMNS = """
edge_id, session_token IS NOT NULL, greatest(last_connected_at, last_batch_at), last_peer,
firmware_version, boot_slot, readings_total, seq_gaps_total, last_seq, revoked_at,
revoked_reason, first_seen_at
"""

_VISIBLE = "(%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))"

LIST_SQL = f"""
SELECT {_COLUMNS} FROM edges
 WHERE {_VISIBLE} AND (%(after)s::text IS NULL OR edge_id > %(after)s)
 ORDER BY edge_id LIMIT %(limit)s
"""

ONE_SQL = f"SELECT {_COLUMNS} FROM edges WHERE edge_id = %(edge_id)s AND {_VISIBLE}"

_TS = {"type": ["string", "null"], "format": "date-time"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["edge_id", "online", "last_contact", "peer", "firmware_version", "boot_slot",
                 "readings_total", "sequence_gaps", "last_seq", "revoked", "revoked_at",
                 "revoked_reason", "first_seen"],
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
    },
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    (edge_id, online, contact, peer, firmware, slot, total, gaps, last_seq, revoked_at,
     reason, first_seen) = row
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
    }


async def list_edges(call: Call) -> Any:
    query, after = paging.after(call.query, "edges", [str])
    limit = call.query["limit"]
    rows = await call.db.rows(LIST_SQL, {"edges": call.edges(), "limit": limit + 1,
                                         "after": after[0] if after else None})
    return paging.page(rows, limit, query, lambda r: [r[0]], item)


async def one_edge(call: Call) -> Any:
    return item(await visible_edge(call, call.path["edge_id"]))


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
    ]
