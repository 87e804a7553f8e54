"""``/v1/meters/{meter_id}/energy`` and ``/v1/edges/{edge_id}/energy``: hourly and daily
energy and peak demand, as the pipeline keeps them (migration 0008, docs/pipeline.md).

Tests: tests/pipeline/test_pipeline_api.py, tests/cloud/test_api_schema.py.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..config import ApiConfig
from ..params import (
    EARLIEST,
    EDGE_PATH,
    FROM,
    LATEST,
    METER_PATH,
    TO,
    Param,
    page_params,
    rfc3339,
    time_range,
)
from ..routes import Call, Operation
from . import edges, meters, paging

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["period", "start", "energy_wh", "peak_demand_w", "readings"],
    "properties": {
        "period": {"type": "string", "enum": ["hour", "day"]},
        "start": {"type": "string", "format": "date-time",
                  "description": "Start of the hour or UTC day."},
        "energy_wh": {"type": "integer",
                      "description": "The register's increase attributed to the period."},
        "peak_demand_w": {"type": "integer"},
        "readings": {"type": "integer"},
    },
}

PERIOD = Param("period", "string", "hour or day (default hour).", enum=("hour", "day"))

_SQL = """
SELECT period, start, energy_wh, peak_demand_w, readings FROM {table}
 WHERE {key} = %(key)s AND period = %(period)s AND start >= %(from)s AND start < %(to)s
   AND (%(after)s::timestamptz IS NULL OR start > %(after)s)
 ORDER BY start LIMIT %(limit)s
"""


def _item(row: tuple[Any, ...]) -> dict[str, Any]:
    period, start, energy, peak, n = row
    return {"period": period, "start": rfc3339(start), "energy_wh": energy,
            "peak_demand_w": peak, "readings": n}


async def _page(call: Call, table: str, key: str, value: Any) -> Any:
    time_range(call.query)
    query, after = paging.after({**call.query, key: value}, table, [datetime.datetime])
    limit = call.query["limit"]
    rows = await call.db.rows(_SQL.format(table=table, key=key), {
        "key": value, "period": call.query["period"] or "hour",
        "from": call.query["from"] or EARLIEST, "to": call.query["to"] or LATEST,
        "after": after[0] if after else None, "limit": limit + 1})
    return paging.page(rows, limit, query, lambda r: [r[1]], _item)


async def meter_energy(call: Call) -> Any:
    await meters.visible_meter(call, call.path["meter_id"])
    return await _page(call, "energy_meter", "meter_id", call.path["meter_id"])


async def edge_energy(call: Call) -> Any:
    await edges.visible_edge(call, call.path["edge_id"])
    return await _page(call, "energy_edge", "edge_id", call.path["edge_id"])


def operations(config: ApiConfig) -> list[Operation]:
    filters = (PERIOD, FROM, TO)
    return [
        Operation("GET", "/v1/meters/{meter_id}/energy", "getMeterEnergy",
                  "A meter's hourly or daily energy and peak demand", meter_energy,
                  params=page_params(config.max_page, (METER_PATH, *filters)),
                  response=paging.schema(SCHEMA)),
        Operation("GET", "/v1/edges/{edge_id}/energy", "getEdgeEnergy",
                  "An edge's hourly or daily energy (its meters together)", edge_energy,
                  params=page_params(config.max_page, (EDGE_PATH, *filters)),
                  response=paging.schema(SCHEMA)),
    ]
