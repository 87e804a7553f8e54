"""Prometheus metrics and /healthz of ``gridcloud serve`` and ``gridcloud api``, scraped over
real HTTP from the real processes' endpoints (a CloudService in this process over real TLS and
PostgreSQL; ``gridcloud api`` as a child process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import requests
import treq
from gridcloud.server import CloudService
from gridedge import loadgen
from prometheus_client.parser import text_string_to_metric_families

from support.api_harness import running_api
from support.cloud_harness import (
    CloudPKI,
    batch,
    endpoint_of,
    hello,
    query,
    start_cloud,
    within,
)
from support.waiting import wait_until


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def samples(text: str) -> dict[str, float]:
    """``name{label="v",...}`` -> value, for every sample of an exposition."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def scrape(url: str) -> tuple[int, str]:
    # A connection of its own, closed after the answer: treq's shared pool would keep it open
    # (both ends of it in this process's reactor) long after the test.
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor(), persistent=False)
    response = await treq.get(url, pool=pool)
    return response.code, (await treq.text_content(response))


@pytest_twisted.ensureDeferred
async def test_serve_counts_connections_handshakes_ingest_and_the_pool(
    cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """One edge connects twice (full, then resumed handshake) and uploads 150 readings: the
    scraped counters say exactly that, and /healthz is 200 while serving."""
    service: CloudService = await start_cloud(
        reactor(), cloud_pki, pg_dsn, metrics_listen="tcp:0:interface=127.0.0.1")
    try:
        assert service.metrics_listener is not None
        base = f"http://127.0.0.1:{service.metrics_listener.port.getHost().port}"
        tls = cloud_pki.client_tls(cloud_pki.edge("edge-m"))
        client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
        await within(reactor(), client.welcome, 10)
        await within(reactor(), client.upload(batch(1, 100)), 10)
        code, text = await scrape(base + "/metrics")
        assert code == 200
        got = samples(text)
        assert got["gridcloud_connections_total"] == 1
        assert got["gridcloud_connections_open"] == 1
        assert got["gridcloud_sessions_live"] == 1
        assert got['gridcloud_tls_handshakes_total{kind="full"}'] == 1
        assert got['gridcloud_tls_handshakes_total{kind="resumed"}'] == 0
        assert got["gridcloud_readings_ingested_total"] == 100
        assert got['gridcloud_uploads_committed_total{kind="batch"}'] == 1
        assert got["gridcloud_commit_seconds_count"] == 1
        assert got["gridcloud_db_pool_size"] == 2
        assert got["gridcloud_db_up"] == 1
        client.transport.abortConnection()
        await within(reactor(), client.lost, 10)

        again, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
        await within(reactor(), again.welcome, 10)
        assert again.resumed is True
        await within(reactor(), again.upload(batch(101, 50)), 10)
        got = samples((await scrape(base + "/metrics"))[1])
        assert got['gridcloud_tls_handshakes_total{kind="resumed"}'] == 1
        assert got["gridcloud_readings_ingested_total"] == 150
        assert got["gridcloud_connections_total"] == 2
        assert got["gridcloud_connections_open"] == 1
        assert await scrape(base + "/healthz") == (200, "ok\n")
        again.transport.abortConnection()
        await within(reactor(), again.lost, 10)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_serve_health_is_503_while_postgresql_is_unreachable(
    cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """A node whose pool cannot reach PostgreSQL answers /healthz 503 with the reason, so
    HAProxy sends it no edges; the metrics say db_up 0."""
    service: CloudService = await start_cloud(
        reactor(), cloud_pki, pg_dsn, metrics_listen="tcp:0:interface=127.0.0.1")
    try:
        assert service.metrics_listener is not None
        base = f"http://127.0.0.1:{service.metrics_listener.port.getHost().port}"
        # What the pool's dead-connection detector does when PostgreSQL goes away.
        service.store.pool.down_since = reactor().seconds()
        assert await scrape(base + "/healthz") == (503, "PostgreSQL unreachable\n")
        assert samples((await scrape(base + "/metrics"))[1])["gridcloud_db_up"] == 0
        service.store.pool.down_since = None
        assert (await scrape(base + "/healthz"))[0] == 200
    finally:
        await service.stopService()


@pytest.mark.parametrize("access_log", [True, False])
def test_api_counts_requests_by_resource_and_status(
    module_dsn: str, tmp_path: Path, access_log: bool
) -> None:
    """``gridcloud api`` counts each answered request by method, resource and status, with its
    latency; unknown paths are one "other" series.  Both are recorded just after the answer
    is sent, with the access log line, and without it when ``access_log = false``."""
    from gridcloud import migrations

    migrations.migrate(module_dsn)
    metrics_port = _free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    for api in running_api(module_dsn, tmp_path / "api.log", access_log=access_log,
                           metrics_listen=f"tcp:{metrics_port}:interface=127.0.0.1"):
        wait_until(lambda: requests.get(base + "/healthz", timeout=5).status_code == 200, 20,
                   "the API's /healthz to say ok", (tmp_path / "api.log",))
        assert api.get("/v1/edges").status_code == 401  # no key
        assert api.get("/v1/openapi.json").status_code == 200
        assert api.get("/no/such/thing/123").status_code == 404
        got = samples(requests.get(base + "/metrics", timeout=5).text)
        assert got['gridcloud_api_requests_total{method="GET",resource="edges",status="401"}'] == 1
        assert got['gridcloud_api_requests_total{method="GET",resource="openapi.json",'
                   'status="200"}'] == 1
        assert got['gridcloud_api_requests_total{method="GET",resource="other",status="404"}'] == 1
        assert got['gridcloud_api_request_seconds_count{resource="edges"}'] == 1
        assert got["gridcloud_api_db_up"] == 1
        assert got["gridcloud_api_db_pool_size"] == 4
    lines = (tmp_path / "api.log").read_text()
    assert ('"GET /no/such/thing/123 HTTP/1.1" 404' in lines) is access_log


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_serve_samples_commands_by_state_and_the_pipeline_lag(
    cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """The database-wide gauges: commands by state (open ones all, finished ones of the last
    hour), records and edges the pipeline has not processed, and its dead letters."""
    service: CloudService = await start_cloud(
        reactor(), cloud_pki, pg_dsn, metrics_listen="tcp:0:interface=127.0.0.1")
    try:
        assert service.metrics_listener is not None and service.database_gauges is not None
        base = f"http://127.0.0.1:{service.metrics_listener.port.getHost().port}"
        tls = cloud_pki.client_tls(cloud_pki.edge("edge-g"))
        client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
        await within(reactor(), client.welcome, 10)
        await within(reactor(), client.upload(batch(1, 30)), 10)  # no pipeline runs: 30 behind
        # commands of an edge that is not connected (a live one would be sent its queued ones)
        query(pg_dsn, "INSERT INTO edges (edge_id) VALUES ('edge-away')")
        for state in ("queued", "queued", "sent", "acknowledged", "succeeded", "failed"):
            query(pg_dsn, "INSERT INTO commands (edge_id, action, expires_at, state) "
                          "VALUES ('edge-away', 'upload_now', now() + interval '1 day', %s)",
                  (state,))
        query(pg_dsn, "INSERT INTO commands (edge_id, action, expires_at, state, updated_at) "
                      "VALUES ('edge-away', 'upload_now', now(), 'expired', "
                      "now() - interval '2 hours')")
        await service.database_gauges.sample()
        got = samples((await scrape(base + "/metrics"))[1])
        assert got.get("gridcloud_db_sample_failures_total") == 0
        states = {s: got[f'gridcloud_commands{{state="{s}"}}'] for s in
                  ("queued", "sent", "acknowledged", "succeeded", "failed", "expired")}
        assert states == {"queued": 2, "sent": 1, "acknowledged": 1, "succeeded": 1,
                          "failed": 1, "expired": 0}
        assert got["gridcloud_pipeline_lag_records"] == 30
        assert got["gridcloud_pipeline_lag_edges"] == 1
        assert got["gridcloud_pipeline_stalled_seconds"] >= 0
        assert got["gridcloud_pipeline_dead_letters"] == 0
        query(pg_dsn, "UPDATE pipeline_progress SET done_seq = 30, updated_at = now() "
                      "WHERE edge_id = 'edge-g'")
        await service.database_gauges.sample()
        got = samples((await scrape(base + "/metrics"))[1])
        assert got["gridcloud_pipeline_lag_records"] == 0
        assert got["gridcloud_pipeline_stalled_seconds"] == 0
        client.transport.abortConnection()
        await within(reactor(), client.lost, 10)
    finally:
        await service.stopService()


def test_grafana_dashboard_asks_only_for_metrics_the_processes_export() -> None:
    """Every metric name in deploy/grafana/gridcloud.json is one ``serve``, ``api`` or
    ``pipeline`` exports (a renamed metric would leave a panel silently empty)."""
    import json
    import re

    from gridcloud.metrics import ApiMetrics, DatabaseGauges, ServeMetrics
    from gridcloud.pipeline.metrics import PipelineMetrics

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana"
                            / "gridcloud.json").read_text())
    exported = {"up"}
    pool = type("Pool", (), {"min": 1, "connections": [], "available": True})()
    from gridcloud.metrics import pool_gauges

    pipeline = PipelineMetrics({}, {}, lambda: (0, 0))
    for metrics, prefix in ((ServeMetrics(), "gridcloud"), (ApiMetrics(), "gridcloud_api"),
                            (pipeline, "gridcloud_pipeline")):
        pool_gauges(metrics.registry, prefix, pool)
        if isinstance(metrics, ServeMetrics):
            metrics.sessions(lambda: 0)
            DatabaseGauges(metrics.registry, lambda sql: [], None)
        for family in metrics.registry.collect():
            # a labelled metric has no sample before its first use: names come from the family
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                        "gauge": ("",)}[family.type]
            exported |= {family.name + suffix for suffix in suffixes}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\b((?:gridcloud|gridedge)_[a-z_]+)\b", expr):
            assert name in exported, f"{name} (in {expr!r}) is not exported"
