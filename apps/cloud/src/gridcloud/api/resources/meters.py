"""``/v1/meters`` and ``/v1/edges/{edge_id}/meters``: each meter's latest state.

The state is the newest interval ingest has stored (``meters``, kept by
``ingest_batch()``).  Link quality and hop count are not in the API: edges do not
report them in gridwire v1 (docs/api.md).

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

from typing import Any

from gridwire import Flags

from ..config import ApiConfig
from ..params import EDGE_PATH, METER_PATH, page_params, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from . import edges, paging

_COLUMNS = """
meter_id, edge_id, last_interval_end, energy_wh, max_demand_w, voltage_dv, current_ma,
power_factor, flags, updated_at
"""

BY_EDGE_SQL = f"""
SELECT {_COLUMNS} FROM meters
 WHERE edge_id = %(edge_id)s AND (%(after)s::bigint IS NULL OR meter_id > %(after)s)
 ORDER BY meter_id LIMIT %(limit)s
"""

ONE_SQL = f"""
SELECT {_COLUMNS} FROM meters
 WHERE meter_id = %(meter_id)s
   AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["meter_id", "edge_id", "last_interval_end", "energy_wh", "max_demand_w",
                 "voltage_v", "current_a", "power_factor", "relay", "flags", "updated_at"],
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
    },
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    meter_id, edge_id, end, energy, demand, dv, ma, pf, flags, updated = row
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
    return item(await visible_meter(call, call.path["meter_id"]))


async def visible_meter(call: Call, meter_id: int) -> tuple[Any, ...]:
    """The meter's row, or a 404 problem if it does not exist or the key may not see it."""
    rows = await call.db.rows(ONE_SQL, {"meter_id": meter_id, "edges": call.edges()})
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
