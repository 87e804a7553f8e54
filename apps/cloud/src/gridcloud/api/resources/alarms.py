"""``/v1/alarms``: what the pipeline raised and cleared (migration 0008, docs/pipeline.md):
tamper, outage, voltage, meter_silent, unit_offline, journal_eviction, low_balance; each
with the evidence that raised it and the evidence that cleared it.

Tests: tests/pipeline/test_pipeline_api.py, tests/cloud/test_api_schema.py.
"""

from __future__ import annotations

from typing import Any

from ..config import ApiConfig
from ..params import EDGE_ID_PATTERN, Param, page_params, rfc3339
from ..routes import Call, Operation
from . import paging

KINDS = ("tamper", "outage", "voltage", "meter_silent", "unit_offline", "journal_eviction",
         "low_balance")

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["alarm_id", "kind", "edge_id", "meter_id", "raised_at", "cleared_at",
                 "evidence", "cleared_evidence"],
    "properties": {
        "alarm_id": {"type": "integer"},
        "kind": {"type": "string"},
        "edge_id": {"type": "string"},
        "meter_id": {"type": "integer", "description": "0: the unit itself."},
        "raised_at": {"type": "string", "format": "date-time"},
        "cleared_at": {"type": ["string", "null"], "format": "date-time"},
        "evidence": {"type": "object"},
        "cleared_evidence": {"type": ["object", "null"]},
    },
}

LIST_SQL = """
SELECT alarm_id, kind, edge_id, meter_id, raised_at, cleared_at, evidence, cleared_evidence
  FROM alarms
 WHERE (%(after)s::bigint IS NULL OR alarm_id > %(after)s)
   AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
   AND (%(edge_id)s::text IS NULL OR edge_id = %(edge_id)s)
   AND (%(meter_id)s::bigint IS NULL OR meter_id = %(meter_id)s)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s)
   AND (%(state)s::text IS NULL OR (cleared_at IS NULL) = (%(state)s = 'open'))
 ORDER BY alarm_id LIMIT %(limit)s
"""


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    alarm_id, kind, edge_id, meter_id, raised, cleared, evidence, cleared_evidence = row
    return {"alarm_id": alarm_id, "kind": kind, "edge_id": edge_id, "meter_id": meter_id,
            "raised_at": rfc3339(raised), "cleared_at": rfc3339(cleared),
            "evidence": evidence, "cleared_evidence": cleared_evidence}


async def list_alarms(call: Call) -> Any:
    query, after = paging.after(call.query, "alarms", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(LIST_SQL, {
        "after": after[0] if after else None, "limit": limit + 1, "edges": call.edges(),
        "edge_id": call.query["edge_id"], "meter_id": call.query["meter_id"],
        "kind": call.query["kind"], "state": call.query["state"]})
    return paging.page(rows, limit, query, lambda r: [r[0]], item)


def operations(config: ApiConfig) -> list[Operation]:
    filters = (
        Param("state", "string", "open or cleared (default: both).", enum=("open", "cleared")),
        Param("kind", "string", "Only alarms of this kind.", enum=KINDS),
        Param("edge_id", "string", "Only this edge's alarms.", pattern=EDGE_ID_PATTERN),
        Param("meter_id", "integer", "Only this meter's alarms (0: the unit's).", minimum=0,
              maximum=2**32 - 1),
    )
    return [
        Operation("GET", "/v1/alarms", "listAlarms",
                  "Alarms the pipeline raised, oldest first, with their evidence", list_alarms,
                  params=page_params(config.max_page, filters),
                  response=paging.schema(SCHEMA)),
    ]
