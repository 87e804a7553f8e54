"""The API's resources over a real ``gridcloud api`` and PostgreSQL seeded by ingest:
edges, meters, readings (pages, ranges, cursors stable under inserts) and events."""

from __future__ import annotations

import datetime
from pathlib import Path

from gridwire import AlarmKind

from support.api_harness import (
    INTERVAL,
    T0,
    ApiProcess,
    World,
    ingest_event,
    ingest_records,
    readings,
    running_api,
)
from support.waiting import wait_until


def iso(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def walk(api: ApiProcess, path: str, key: str, **params: object) -> list[dict]:
    """Every item of a paged list, following ``next`` cursors."""
    items: list[dict] = []
    cursor = None
    while True:
        args = dict(params, **({"cursor": cursor} if cursor else {}))
        r = api.get(path, key, params=args)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


def test_edges_list_their_counters_and_page_by_cursor(api: ApiProcess, world: World) -> None:
    r = api.get("/v1/edges", world.reader, params={"limit": 1})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    first = r.json()
    assert [e["edge_id"] for e in first["items"]] == ["e1"] and first["next"]
    edges = walk(api, "/v1/edges", world.reader, limit=1)
    assert [e["edge_id"] for e in edges] == ["e1", "e2"]
    e1 = edges[0]
    assert e1["readings_total"] == 2 * world.intervals
    assert e1["last_seq"] == 2 * world.intervals + 2  # two events after the readings
    assert e1["sequence_gaps"] == 0 and e1["revoked"] is False and e1["online"] is False
    assert e1["firmware_version"] == "1.0.0" and e1["peer"] == "192.0.2.7:4000"
    e2 = api.get("/v1/edges/e2", world.reader).json()
    assert e2["firmware_version"] == "1.1.0"
    assert e1["health"] is None, "no summary received yet"
    assert e2["health"] == {
        "reported_at": iso(T0 + 600), "journal_backlog": 12, "journal_oldest_age_s": 840,
        "last_radio_frame_at": None, "disk_free_bytes": 812344 * 1024,
        "disk_total_bytes": 1015808 * 1024, "memory_available_bytes": 301232 * 1024,
        "memory_total_bytes": 503808 * 1024, "uptime_s": 86400, "gridedge_uptime_s": 3600,
        "restarts": 1}


def test_edge_traffic_history_pages_newest_first_within_a_range(
    api: ApiProcess, world: World
) -> None:
    days = walk(api, "/v1/edges/e1/traffic", world.reader, limit=1)
    assert [(d["day"], d["bytes_up"], d["bytes_down"]) for d in days] == [
        ("2026-11-17", 300, 30), ("2026-11-16", 205, 21), ("2026-11-15", 100, 10)]
    some = walk(api, "/v1/edges/e1/traffic", world.reader, limit=1,
                **{"from": "2026-11-15T12:00:00Z", "to": "2026-11-17T00:00:00Z"})
    assert [d["day"] for d in some] == ["2026-11-16"]  # a day counts from its 00:00 UTC
    assert walk(api, "/v1/edges/e2/traffic", world.reader) == []
    assert api.get("/v1/edges/e1/traffic", world.e2_only).status_code == 404
    e1 = api.get("/v1/edges/e1", world.reader).json()
    assert (e1["bytes_up_today"], e1["bytes_down_today"]) == (0, 0)  # nothing counted today


def test_meters_show_their_latest_interval_in_units(api: ApiProcess, world: World) -> None:
    meters = walk(api, "/v1/edges/e1/meters", world.reader, limit=1)
    assert [m["meter_id"] for m in meters] == [1, 2]
    one = api.get("/v1/meters/1", world.reader).json()
    last = world.intervals - 1
    assert one["last_interval_end"] == iso(T0 + last * INTERVAL)
    assert one["energy_wh"] == 1000 + last * 10 + 1
    assert (one["voltage_v"], one["current_a"], one["power_factor"]) == (230.1, 1.5, 0.95)
    assert one["relay"] == "open" and api.get("/v1/meters/2", world.reader).json()[
        "relay"] == "closed"


def test_meter_readings_over_a_time_range_page_in_time_order(
    api: ApiProcess, world: World
) -> None:
    got = walk(api, "/v1/meters/1/readings", world.reader, limit=7,
               **{"from": iso(T0 + 10 * INTERVAL), "to": iso(T0 + 30 * INTERVAL)})
    assert [r["interval_end"] for r in got] == [iso(T0 + i * INTERVAL) for i in range(10, 30)]
    assert {r["meter_id"] for r in got} == {1}


def test_a_cursor_is_stable_under_inserts(api: ApiProcess, world: World) -> None:
    """Rows stored between two pages neither repeat nor shift what the next page holds."""
    path = "/v1/edges/e2/readings"
    page1 = api.get(path, world.reader, params={"limit": 50}).json()
    # e2 uploads a later day meanwhile
    ingest_records(world.dsn, "e2", world.intervals + 1,
                   readings([3], T0 + world.intervals * INTERVAL, 5))
    rest = walk(api, path, world.reader, limit=50, cursor=page1["next"])
    seqs = [r["seq"] for r in page1["items"] + rest]
    assert seqs == list(range(1, world.intervals + 6))


def test_events_filter_by_kind_and_time(api: ApiProcess, world: World) -> None:
    every = walk(api, "/v1/events", world.reader, limit=1)
    assert [(e["kind"], e["meter_id"]) for e in every] == [("tamper", 1), ("outage", 2)]
    tamper = api.get("/v1/events", world.reader, params={"kind": "tamper"}).json()["items"]
    assert [e["detail"] for e in tamper] == ["magnet"]
    late = api.get("/v1/events", world.reader, params={"from": iso(T0 + 150)}).json()
    assert [e["kind"] for e in late["items"]] == ["outage"]


def test_a_key_limited_to_an_edge_sees_nothing_else(api: ApiProcess, world: World) -> None:
    assert [e["edge_id"] for e in api.get("/v1/edges", world.e2_only).json()["items"]] == ["e2"]
    assert api.get("/v1/edges/e1", world.e2_only).status_code == 404
    assert api.get("/v1/meters/1/readings", world.e2_only).status_code == 404
    assert api.get("/v1/events", world.e2_only).json()["items"] == []
    assert api.get("/v1/meters/3", world.e2_only).status_code == 200


def test_access_log_false_writes_no_line_per_request(world: World, tmp_path: Path) -> None:
    """Behind a load balancer that logs requests, the API's own line per request can go."""
    for quiet in running_api(world.dsn, tmp_path / "quiet.log", access_log=False):
        assert quiet.get("/v1/edges", world.reader).status_code == 200
        assert quiet.get("/v1/openapi.json").status_code == 200
    text = (tmp_path / "quiet.log").read_text()
    assert "listened on" in text and '"GET /v1/' not in text
    for loud in running_api(world.dsn, tmp_path / "loud.log"):
        assert loud.get("/v1/edges", world.reader).status_code == 200
        wait_until(lambda: '"GET /v1/edges' in (tmp_path / "loud.log").read_text(), 5,
                   "the access log line")


def test_meters_show_the_link_quality_their_edge_reported(api: ApiProcess,
                                                          world: World) -> None:
    """A meter's ``link`` is its edge's newest LINK_QUALITY event (RSSI, hops, parent); null
    for a meter whose edge never reported one. (Runs last: it adds events to e2.)"""
    assert api.get("/v1/meters/1", world.reader).json()["link"] is None
    seq = world.intervals + 100
    ingest_event(world.dsn, "e2", seq, 3, T0 + 300, int(AlarmKind.LINK_QUALITY), "-82 3 7")
    ingest_event(world.dsn, "e2", seq + 1, 3, T0 + 900, int(AlarmKind.LINK_QUALITY), "-64 1 0")
    one = api.get("/v1/meters/3", world.reader).json()
    assert one["link"] == {"rssi_dbm": -64, "hops": 1, "parent_id": None,
                           "reported_at": iso(T0 + 900)}
    listed = walk(api, "/v1/edges/e2/meters", world.e2_only)
    assert [m["link"]["rssi_dbm"] for m in listed] == [-64]
    kinds = api.get("/v1/events", world.e2_only, params={"kind": "link_quality"}).json()
    assert [e["detail"] for e in kinds["items"]] == ["-82 3 7", "-64 1 0"]
