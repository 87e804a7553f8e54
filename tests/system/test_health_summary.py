"""The unit's health summary from gridsim's radio to the API: gridsim -> pty -> `gridedge run`
(journalling a HEALTH_SUMMARY every second here) -> `gridcloud serve` -> PostgreSQL ->
`gridcloud api`, whose GET /v1/edges/{id} shows the numbers; and the readings are not
disturbed by the summaries sharing their sequence space."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from gridcloud.api import keys

from support.api_harness import query, running_api
from support.edge_harness import (
    EDGE_ID,
    Cloud,
    Edge,
    Sim,
    assert_exactly_once,
    edge_config,
    make_pki,
    running,
    stored_rows,
)
from support.waiting import wait_until


def test_the_api_shows_the_units_health_summary(tmp_path: Path, pg_dsn: str) -> None:
    data = tmp_path / "data"
    pki = make_pki(tmp_path, data)
    cloud = Cloud(tmp_path, pki, pg_dsn).start()
    sim = Sim(tmp_path, tmp_path / "radio", meters=5, speed=600, duration="2h").start()
    edge = Edge(tmp_path, data, edge_config(data, uplink_port=cloud.port, radio=sim.port,
                                            extra="summary_interval = 1\n")).start()
    logs = (edge.log, cloud.log, sim.log)
    with running(edge, sim, cloud):

        def taken() -> Any:
            rows = query(pg_dsn, "SELECT health_at FROM edges WHERE edge_id = %s", (EDGE_ID,))
            return rows[0][0] if rows else None

        wait_until(lambda: taken() is not None, 60, "a first health summary stored", logs)
        first = taken()
        wait_until(lambda: taken() > first, 30, "a later summary replacing it", logs)
        wait_until(lambda: query(pg_dsn, "SELECT health->>'last_radio_frame' FROM edges")[0][0]
                   is not None, 30, "a summary after the first radio frame", logs)
        # summaries are not alarms: none is an event row
        assert query(pg_dsn, "SELECT count(*) FROM events WHERE kind = 32774") == [(0,)]
        key = keys.create_key(pg_dsn, "ops", ["read"])
        for api in running_api(pg_dsn, tmp_path / "api.log"):
            health = api.get(f"/v1/edges/{EDGE_ID}", key).json()["health"]
            listed = api.get("/v1/edges", key).json()["items"][0]["health"]
        assert listed["reported_at"] >= health["reported_at"]
        now = datetime.datetime.now(datetime.UTC)
        reported = datetime.datetime.fromisoformat(health["reported_at"])
        frame = datetime.datetime.fromisoformat(health["last_radio_frame_at"])
        assert abs((now - reported).total_seconds()) < 60
        assert abs((reported - frame).total_seconds()) < 30
        oldest = health["journal_oldest_age_s"]
        assert health["journal_backlog"] >= 0 and (oldest is None or oldest >= 0)
        assert 0 < health["disk_free_bytes"] <= health["disk_total_bytes"]
        assert 0 < health["memory_available_bytes"] <= health["memory_total_bytes"]
        assert health["uptime_s"] > health["gridedge_uptime_s"] >= 0
        assert health["restarts"] == 0
        wait_until(sim.complete, 120, "gridsim to finish", logs)
        total = sum(c for c, _ in sim.expected().values())
        wait_until(lambda: stored_rows(pg_dsn) >= total, 60, "every reading stored", logs)
        assert_exactly_once(pg_dsn, sim)
