"""``/v1/meters`` and ``/v1/edges/{edge_id}/meters``: each meter's latest state.

The state is the newest interval ingest has stored (``meters``, kept by
``ingest_batch()``).  ``link`` is the meter's radio link (RSSI, hops, parent) from the newest
LINK_QUALITY event (kind 0x8009, ``detail`` "<rssi> <hops> <parent>") its current edge sent
(gridedge.linkquality; null until one came): edges report it when it changes, not with every
reading, so it lives in ``events`` and is looked up per meter (``events_meter_time`` index,
newest first; a meter has few events).

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

from typing import Any

from gridwire import AlarmKind, Flags

from ..config import ApiConfig
from ..params import EDGE_PATH, METER_PATH, page_params, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from . import edges, paging

LINK_QUALITY = AlarmKind.LINK_QUALITY

_COLUMNS = """
meter_id, edge_id, last_interval_end, energy_wh, max_demand_w, voltage_dv, current_ma,
power_factor, flags, updated_at
"""
_LINK = f"""
 LEFT JOIN LATERAL (
   SELECT e.detail, e.event_time FROM events e
    WHERE e.meter_id = m.meter_id AND e.edge_id = m.edge_id AND e.kind = {int(LINK_QUALITY)}
    ORDER BY e.event_time DESC, e.seq DESC LIMIT 1) lq ON true
"""
_LINK_COLUMNS = ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(",")) + \
    ", lq.detail, lq.event_time"

BY_EDGE_SQL = f"""
SELECT {_LINK_COLUMNS} FROM meters m {_LINK}
 WHERE m.edge_id = %(edge_id)s AND (%(after)s::bigint IS NULL OR m.meter_id > %(after)s)
 ORDER BY m.meter_id LIMIT %(limit)s
"""

_VISIBLE = """
 WHERE m.meter_id = %(meter_id)s
   AND (%(edges)s::text[] IS NULL OR m.edge_id = ANY(%(edges)s::text[]))
"""
ONE_SQL = f"SELECT {_LINK_COLUMNS} FROM meters m {_LINK} {_VISIBLE}"
VISIBLE_SQL = f"SELECT m.meter_id, m.edge_id FROM meters m {_VISIBLE}"

LINK_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "The meter's radio link as its edge last reported it (null: not yet).",
    "additionalProperties": False,
    "required": ["rssi_dbm", "hops", "parent_id", "reported_at"],
    "properties": {
        "rssi_dbm": {"type": "integer", "description": "Received signal strength, dBm."},
        "hops": {"type": "integer", "description": "Mesh hops to the edge's radio module."},
        "parent_id": {"type": ["integer", "null"],
                      "description": "The meter it reaches the module through (null: direct)."},
        "reported_at": {"type": "string", "format": "date-time"},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["meter_id", "edge_id", "last_interval_end", "energy_wh", "max_demand_w",
                 "voltage_v", "current_a", "power_factor", "relay", "flags", "updated_at",
                 "link"],
    "properties": {
        "meter_id": {"type": "integer"},
        "edge_id": {"type": "string"},
        "last_interval_end": {"type": "string", "format": "date-time"},
        "energy_wh": {"type": "integer", "description": "Import register, Wh."},
        "max_demand_w": {"type": "integer"},
        "voltage_v": {"type": "number", "description": "V, 0.1 V resolution."},
        "current_a": {"type": "number", "description": "A, 1 mA resolution."},
        "power_factor": {"type": "number", "description": "-1..1, 0.001 resolution."},
        "relay": {"type": "string", "enum": ["open", "closed"]},
        "flags": {"type": "integer"},
        "updated_at": {"type": "string", "format": "date-time"},
        "link": LINK_SCHEMA,
    },
}


def link(detail: str | None, at: Any) -> dict[str, Any] | None:
    """The ``link`` object from a LINK_QUALITY event (None: none, or not one we can read)."""
    if detail is None:
        return None
    try:
        rssi, hops, parent = (int(v) for v in detail.split())
    except ValueError:
        return None
    return {"rssi_dbm": rssi, "hops": hops, "parent_id": parent or None,
            "reported_at": rfc3339(at)}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    meter_id, edge_id, end, energy, demand, dv, ma, pf, flags, updated, detail, at = row
    return {
        "meter_id": meter_id,
        "edge_id": edge_id,
        "last_interval_end": rfc3339(end),
        "energy_wh": energy,
        "max_demand_w": demand,
        "voltage_v": dv / 10,
        "current_a": ma / 1000,
        "power_factor": pf / 1000,
        "relay": "open" if flags & Flags.RELAY_OPEN else "closed",
        "flags": flags,
        "updated_at": rfc3339(updated),
        "link": link(detail, at),
    }


async def meters_of_edge(call: Call) -> Any:
    edge_id = call.path["edge_id"]
    await edges.visible_edge(call, edge_id)
    query, after = paging.after({**call.query, "edge": edge_id}, "edge-meters", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(BY_EDGE_SQL, {"edge_id": edge_id, "limit": limit + 1,
                                            "after": after[0] if after else None})
    return paging.page(rows, limit, query, lambda r: [r[0]], item)


async def one_meter(call: Call) -> Any:
    meter_id = call.path["meter_id"]
    rows = await call.db.rows(ONE_SQL, {"meter_id": meter_id, "edges": call.edges()})
    if not rows:
        raise Problem("not-found", f"no meter {meter_id}")
    return item(rows[0])


async def visible_meter(call: Call, meter_id: int) -> tuple[Any, ...]:
    """(meter_id, edge_id), or a 404 problem if it does not exist or the key may not see it."""
    rows = await call.db.rows(VISIBLE_SQL, {"meter_id": meter_id, "edges": call.edges()})
    if not rows:
        raise Problem("not-found", f"no meter {meter_id}")
    return rows[0]


def operations(config: ApiConfig) -> list[Operation]:
    return [
        Operation("GET", "/v1/edges/{edge_id}/meters", "listEdgeMeters",
                  "Meters of one edge, with their latest state", meters_of_edge,
                  params=page_params(config.max_page, (EDGE_PATH,)),
                  response=paging.schema(SCHEMA)),
        Operation("GET", "/v1/meters/{meter_id}", "getMeter", "One meter's latest state",
                  one_meter, params=(METER_PATH,), response=SCHEMA),
    ]
