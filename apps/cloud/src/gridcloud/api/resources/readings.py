"""``/v1/meters/{meter_id}/readings`` and ``/v1/edges/{edge_id}/readings``.

Each is a JSON page (keyset-paginated) or, with ``Accept: text/csv``, the whole
range streamed as CSV (gridcloud.api.csvexport).  A meter's readings are in
time order (index ``readings_meter_time``), an edge's in journal order (index
``readings_edge_seq`` of migration 0005); each query prunes the daily
partitions to the time range.

Why PostgreSQL writes the JSON of a page's items (``_JSON_ITEM``): turning 100
rows into Python objects (datetimes, floats) and then into JSON cost the API
more than the query itself (bench/bench_api.py, profiled); each row now comes
as its JSON text, with the position of the next page's cursor beside it, and
the page is joined from those texts.  The numbers carry the precision stored
(``230.1``, ``1.500``, ``0.950``), as in the CSV export.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_csv.py.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..config import ApiConfig
from ..csvexport import MEDIA_TYPE as CSV
from ..csvexport import stream
from ..params import (
    EARLIEST,
    EDGE_PATH,
    FROM,
    LATEST,
    METER_PATH,
    TO,
    page_params,
    rfc3339,
    time_range,
)
from ..routes import STREAMED, Call, Operation
from . import edges, meters, paging

_COLUMNS = """edge_id, seq, meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
current_ma, power_factor, flags"""

CSV_HEADER = ("edge_id,seq,meter_id,interval_end,energy_wh,max_demand_w,voltage_v,current_a,"
              "power_factor,flags")

#: One CSV line per row, formatted by PostgreSQL (with the precision stored).
_CSV_LINE = """concat_ws(',', edge_id, seq, meter_id,
  to_char(interval_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  energy_wh, max_demand_w, (voltage_dv / 10.0)::numeric(8, 1),
  (current_ma / 1000.0)::numeric(22, 3), (power_factor / 1000.0)::numeric(6, 3), flags)"""

#: One reading as a JSON object, written by PostgreSQL (the fields of SCHEMA).
_JSON_ITEM = """json_build_object('edge_id', edge_id, 'seq', seq, 'meter_id', meter_id,
  'interval_end', to_char(interval_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'energy_wh', energy_wh, 'max_demand_w', max_demand_w,
  'voltage_v', (voltage_dv / 10.0)::numeric(8, 1),
  'current_a', (current_ma / 1000.0)::numeric(22, 3),
  'power_factor', (power_factor / 1000.0)::numeric(6, 3), 'flags', flags)::text"""

_RANGE = "interval_end >= %(from)s AND interval_end < %(to)s"
_VISIBLE = "(%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))"

_METER_WHERE = f"meter_id = %(meter_id)s AND {_RANGE} AND {_VISIBLE}"
METER_PAGE_SQL = f"""
SELECT {_JSON_ITEM}, interval_end, edge_id, seq FROM readings
 WHERE {_METER_WHERE}
   AND (%(t)s::timestamptz IS NULL OR (interval_end, edge_id, seq) > (%(t)s, %(e)s, %(s)s))
 ORDER BY interval_end, edge_id, seq LIMIT %(limit)s
"""
METER_CSV_SQL = f"""
SELECT {_CSV_LINE} FROM readings WHERE {_METER_WHERE} ORDER BY interval_end, edge_id, seq
"""

_EDGE_WHERE = f"edge_id = %(edge_id)s AND {_RANGE} AND {_VISIBLE}"
EDGE_PAGE_SQL = f"""
SELECT {_JSON_ITEM}, seq FROM readings
 WHERE {_EDGE_WHERE} AND seq > %(s)s
 ORDER BY seq LIMIT %(limit)s
"""
EDGE_CSV_SQL = f"SELECT {_CSV_LINE} FROM readings WHERE {_EDGE_WHERE} ORDER BY seq"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["edge_id", "seq", "meter_id", "interval_end", "energy_wh", "max_demand_w",
                 "voltage_v", "current_a", "power_factor", "flags"],
    "properties": {
        "edge_id": {"type": "string"},
        "seq": {"type": "integer", "description": "The edge's journal sequence number."},
        "meter_id": {"type": "integer"},
        "interval_end": {"type": "string", "format": "date-time"},
        "energy_wh": {"type": "integer"},
        "max_demand_w": {"type": "integer"},
        "voltage_v": {"type": "number"},
        "current_a": {"type": "number"},
        "power_factor": {"type": "number"},
        "flags": {"type": "integer"},
    },
}


def item(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of ``_COLUMNS`` as the JSON value of SCHEMA (the feed's readings)."""
    edge_id, seq, meter_id, end, energy, demand, dv, ma, pf, flags = row
    return {
        "edge_id": edge_id,
        "seq": seq,
        "meter_id": meter_id,
        "interval_end": rfc3339(end),
        "energy_wh": energy,
        "max_demand_w": demand,
        "voltage_v": dv / 10,
        "current_a": ma / 1000,
        "power_factor": pf / 1000,
        "flags": flags,
    }


def _range(call: Call) -> dict[str, datetime.datetime]:
    time_range(call.query)
    return {"from": call.query["from"] or EARLIEST, "to": call.query["to"] or LATEST}


async def meter_readings(call: Call) -> Any:
    meter_id = call.path["meter_id"]
    args: dict[str, Any] = {"meter_id": meter_id, "edges": call.edges(), **_range(call)}
    if call.accepts_csv():
        await meters.visible_meter(call, meter_id)
        await stream(call.db, call.request, CSV_HEADER, METER_CSV_SQL, args, f"meter-{meter_id}")
        return STREAMED
    query, after = paging.after({**call.query, "meter": meter_id}, "meter-readings",
                                [datetime.datetime, str, int])
    t, e, s = after if after else (None, None, None)
    limit = call.query["limit"]
    rows = await call.db.rows(METER_PAGE_SQL, {**args, "t": t, "e": e, "s": s,
                                               "limit": limit + 1})
    if not rows:  # only now (one round trip less in the usual case): 404 or an empty page?
        await meters.visible_meter(call, meter_id)
    return paging.encoded_page(rows, limit, query)


async def edge_readings(call: Call) -> Any:
    edge_id = call.path["edge_id"]
    args: dict[str, Any] = {"edge_id": edge_id, "edges": call.edges(), **_range(call)}
    if call.accepts_csv():
        await edges.visible_edge(call, edge_id)
        await stream(call.db, call.request, CSV_HEADER, EDGE_CSV_SQL, args, f"edge-{edge_id}")
        return STREAMED
    query, after = paging.after({**call.query, "edge": edge_id}, "edge-readings", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(EDGE_PAGE_SQL, {**args, "s": after[0] if after else 0,
                                              "limit": limit + 1})
    if not rows:
        await edges.visible_edge(call, edge_id)
    return paging.encoded_page(rows, limit, query)


_CSV_NOTE = ("With `Accept: text/csv` the whole range is streamed as CSV instead "
             "(no paging: `limit` and `cursor` are ignored).")


def operations(config: ApiConfig) -> list[Operation]:
    extra = (FROM, TO)
    return [
        Operation("GET", "/v1/meters/{meter_id}/readings", "listMeterReadings",
                  "Readings of one meter over a time range", meter_readings,
                  params=page_params(config.max_page, (METER_PATH, *extra)),
                  response=paging.schema(SCHEMA), media=(CSV,), description=_CSV_NOTE),
        Operation("GET", "/v1/edges/{edge_id}/readings", "listEdgeReadings",
                  "Readings of every meter of one edge over a time range", edge_readings,
                  params=page_params(config.max_page, (EDGE_PATH, *extra)),
                  response=paging.schema(SCHEMA), media=(CSV,), description=_CSV_NOTE),
    ]
