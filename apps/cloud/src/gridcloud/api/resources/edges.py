"""``/v1/edges``: every edge unit, online now or not, with its counters.

"Online" is ``edges.session_token`` (written by the serve nodes, gridcloud.presence);
"last contact" is the later of the last connection and the last stored upload.
"Bytes up/down today" are the TLS bytes on the socket of the edge's connections
this UTC day, as every serve node counted and wrote them (``edge_traffic``,
gridcloud.traffic): late by at most a node's ``traffic_flush_interval``.
``/v1/edges/{edge_id}/traffic`` pages through the edge's earlier days.
"Health" is the unit's latest health summary (an event of kind 0x8006 it journals
every ``[health] summary_interval``; ``edges.health``, migration 0011), null until
the first one arrives.

The monthly data budget (``[uplink] budget_mb_per_month``) is what the unit said in its
last Hello (with its own count of the month's bytes then); beside it the cloud's count of
this UTC month, always current, and the share of the budget used by the larger of the two.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_traffic.py,
tests/system/test_health_summary.py.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..config import ApiConfig
from ..params import EDGE_PATH, FROM, TO, page_params, rfc3339, time_range
from ..problems import Problem
from ..routes import Call, Operation
from . import paging

_COLUMNS = """
e.edge_id, session_token IS NOT NULL, greatest(last_connected_at, last_batch_at), last_peer,
firmware_version, boot_slot, readings_total, seq_gaps_total, last_seq, revoked_at,
revoked_reason, first_seen_at, coalesce(t.bytes_up, 0), coalesce(t.bytes_down, 0),
e.health, e.health_at,
e.budget_bytes,
CASE WHEN date_trunc('month', last_connected_at AT TIME ZONE 'UTC')
          = date_trunc('month', now() AT TIME ZONE 'UTC') THEN e.month_bytes_reported END,
(SELECT coalesce(sum(m.bytes_up + m.bytes_down), 0) FROM edge_traffic m
  WHERE m.edge_id = e.edge_id
    AND m.day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date),
e.tags
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
_COUNT = {"type": ["integer", "null"], "minimum": 0}

HEALTH_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "description": "The unit's latest health summary (null: none received yet). A value "
                   "the unit could not measure is null.",
    "required": ["reported_at", "journal_backlog", "journal_oldest_age_s",
                 "last_radio_frame_at", "disk_free_bytes", "disk_total_bytes",
                 "memory_available_bytes", "memory_total_bytes", "uptime_s",
                 "gridedge_uptime_s", "restarts"],
    "properties": {
        "reported_at": {"type": "string", "format": "date-time",
                        "description": "When the unit took the summary."},
        "journal_backlog": {**_COUNT, "description": "Entries waiting for the cloud."},
        "journal_oldest_age_s": {**_COUNT,
                                 "description": "Seconds the oldest of them had waited."},
        "last_radio_frame_at": _TS,
        "disk_free_bytes": {**_COUNT, "description": "Free on the data partition."},
        "disk_total_bytes": _COUNT,
        "memory_available_bytes": _COUNT,
        "memory_total_bytes": _COUNT,
        "uptime_s": {**_COUNT, "description": "Seconds since the unit booted."},
        "gridedge_uptime_s": {**_COUNT, "description": "Seconds since gridedge started."},
        "restarts": {**_COUNT,
                     "description": "Restarts of gridedge's supervised parts since it started."},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["edge_id", "online", "last_contact", "peer", "firmware_version", "boot_slot",
                 "readings_total", "sequence_gaps", "last_seq", "revoked", "revoked_at",
                 "revoked_reason", "first_seen", "bytes_up_today", "bytes_down_today",
                 "health", "budget_bytes_per_month", "month_bytes", "month_bytes_reported",
                 "budget_used", "tags"],
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
        "health": HEALTH_SCHEMA,
        "budget_bytes_per_month": {
            "type": ["integer", "null"], "minimum": 1,
            "description": "The unit's monthly data budget ([uplink] budget_mb_per_month) as "
                           "its last connection said; null: none configured."},
        "month_bytes": {
            "type": "integer", "minimum": 0,
            "description": "Bytes both ways on the edge's connections this UTC month, as the "
                           "serve nodes counted them (the days of bytes_up_today)."},
        "month_bytes_reported": {
            "type": ["integer", "null"], "minimum": 0,
            "description": "This month's bytes as the unit counted them at its last connection "
                           "(null: no budget, or that connection was in an earlier month)."},
        "budget_used": {
            "type": ["number", "null"], "minimum": 0,
            "description": "The larger of month_bytes and month_bytes_reported over the budget "
                           "(1.0: all of it); null without a budget. The unit stretches its "
                           "uploads ahead of pace and raises DATA_BUDGET at 0.8 and 1.0."},
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
     reason, first_seen, up, down, health, health_at, budget, reported, month, tags) = row
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
        "health": health_item(health, health_at),
        "budget_bytes_per_month": budget,
        "month_bytes": int(month),
        "month_bytes_reported": reported,
        "budget_used": round(max(int(month), reported or 0) / budget, 4) if budget else None,
        "tags": list(tags),
    }


def _kib(value: Any) -> int | None:
    return None if value is None else int(value) * 1024


def _moment(seconds: Any) -> str | None:
    """Unix seconds as RFC 3339; None when absent or beyond what a timestamp can hold."""
    if seconds is None:
        return None
    try:
        return rfc3339(datetime.datetime.fromtimestamp(int(seconds), datetime.UTC))
    except (OverflowError, OSError, ValueError):
        return None


def health_item(health: dict[str, Any] | None, at: Any) -> dict[str, Any] | None:
    """``edges.health`` (gridwire.HealthSummary's fields) as the API shows it."""
    if health is None or at is None:
        return None
    return {
        "reported_at": rfc3339(at),
        "journal_backlog": health.get("journal_backlog"),
        "journal_oldest_age_s": health.get("journal_oldest_age"),
        "last_radio_frame_at": _moment(health.get("last_radio_frame")),
        "disk_free_bytes": _kib(health.get("disk_free_kib")),
        "disk_total_bytes": _kib(health.get("disk_total_kib")),
        "memory_available_bytes": _kib(health.get("memory_available_kib")),
        "memory_total_bytes": _kib(health.get("memory_total_kib")),
        "uptime_s": health.get("uptime"),
        "gridedge_uptime_s": health.get("gridedge_uptime"),
        "restarts": health.get("restarts"),
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
