"""``/v1/events``: alarms reported by edges (tamper, outage, relay...), by kind and time.

Kinds are gridwire's AlarmKind names in lower case; a code gridwire does not
name is ``kind-<code>``.

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

import datetime
from typing import Any

from gridwire import AlarmKind

from ..config import ApiConfig
from ..params import (
    EARLIEST,
    EDGE_ID_PATTERN,
    FROM,
    LATEST,
    TO,
    Param,
    page_params,
    rfc3339,
    time_range,
)
from ..routes import Call, Operation
from . import paging

KINDS = {k.name.lower(): int(k) for k in AlarmKind}

_COLUMNS = "edge_id, seq, meter_id, event_time, kind, detail, received_at"

LIST_SQL = f"""
SELECT {_COLUMNS} FROM events
 WHERE event_time >= %(from)s AND event_time < %(to)s
   AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
   AND (%(edge_id)s::text IS NULL OR edge_id = %(edge_id)s)
   AND (%(meter_id)s::bigint IS NULL OR meter_id = %(meter_id)s)
   AND (%(kind)s::integer IS NULL OR kind = %(kind)s)
   AND (%(t)s::timestamptz IS NULL OR (event_time, edge_id, seq) > (%(t)s, %(e)s, %(s)s))
 ORDER BY event_time, edge_id, seq LIMIT %(limit)s
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["edge_id", "seq", "meter_id", "time", "kind", "kind_code", "detail",
                 "received_at"],
    "properties": {
        "edge_id": {"type": "string"},
        "seq": {"type": "integer"},
        "meter_id": {"type": "integer"},
        "time": {"type": "string", "format": "date-time"},
        "kind": {"type": "string"},
        "kind_code": {"type": "integer"},
        "detail": {"type": "string"},
        "received_at": {"type": "string", "format": "date-time"},
    },
}


def kind_name(code: int) -> str:
    try:
        return AlarmKind(code).name.lower()
    except ValueError:
        return f"kind-{code}"


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    edge_id, seq, meter_id, time, kind, detail, received = row
    return {
        "edge_id": edge_id,
        "seq": seq,
        "meter_id": meter_id,
        "time": rfc3339(time),
        "kind": kind_name(kind),
        "kind_code": kind,
        "detail": detail,
        "received_at": rfc3339(received),
    }


async def list_events(call: Call) -> Any:
    time_range(call.query)
    query, after = paging.after(call.query, "events", [datetime.datetime, str, int])
    t, e, s = after if after else (None, None, None)
    limit = call.query["limit"]
    kind = call.query["kind"]
    rows = await call.db.rows(LIST_SQL, {
        "from": call.query["from"] or EARLIEST, "to": call.query["to"] or LATEST,
        "edges": call.edges(), "edge_id": call.query["edge_id"],
        "meter_id": call.query["meter_id"], "kind": KINDS[kind] if kind else None,
        "t": t, "e": e, "s": s, "limit": limit + 1,
    })
    return paging.page(rows, limit, query, lambda r: [r[3], r[0], r[1]], item)


def operations(config: ApiConfig) -> list[Operation]:
    filters = (
        Param("edge_id", "string", "Only this edge's events.", pattern=EDGE_ID_PATTERN),
        Param("meter_id", "integer", "Only this meter's events.", minimum=0,
              maximum=2**32 - 1),
        Param("kind", "string", "Only events of this kind.", enum=tuple(KINDS)),
        FROM,
        TO,
    )
    return [
        Operation("GET", "/v1/events", "listEvents", "Events reported by edges", list_events,
                  params=page_params(config.max_page, filters),
                  response=paging.schema(SCHEMA)),
    ]
