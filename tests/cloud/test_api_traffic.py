"""Bytes up/down per edge and UTC day: counted by ``gridcloud serve`` below TLS, written to
PostgreSQL in additive flushes, served by ``gridcloud api``.

The end-to-end test runs the real edge uplink (gridedge.uplink.service, with its own byte
counts in gridedge.uplink.traffic) against a real CloudService over real mutual TLS, and
checks that the cloud's numbers are the edge's.  Each side counts a byte when it hands it to
its socket or gets it from it, so the only bytes one side counts and the other does not are
those written as a connection ends: the TLS close_notify alert each side writes when it
closes (or aborts) a connection the other has already hung up on.  So per connection and
direction the sender's count may exceed the receiver's by at most one close_notify record.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest_twisted
from gridcloud import migrations
from gridcloud.api import keys
from gridcloud.ingest import IngestStore
from gridcloud.traffic import CountingFactory, EdgeTraffic, TrafficCounter
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Journal
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.link import LinkSettings
from gridedge.uplink.service import UplinkService
from gridedge.uplink.tls import DeviceIdentity
from gridedge.uplink.traffic import Traffic
from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from support.api_harness import running_api
from support.cloud_harness import SERVER_NAME, CloudPKI, query, start_cloud, wait_until
from support.journal_helpers import rec

#: A TLS 1.3 close_notify alert record: 5 header + 2 alert + 1 type + 16 AEAD tag bytes.
CLOSE_NOTIFY = 24

DAY = 86400.0
BUDGET = 50_000_000  # [uplink] budget_mb_per_month = 50


def stored(dsn: str, edge_id: str) -> dict[str, tuple[int, int]]:
    rows = query(dsn, "SELECT day, bytes_up, bytes_down FROM edge_traffic WHERE edge_id = %s "
                      "ORDER BY day", (edge_id,))
    return {day.isoformat(): (up, down) for day, up, down in rows}


def make_uplink(journal: Journal, tls: Path, port: int) -> UplinkService:
    config = UplinkConfig(host="127.0.0.1", port=port, server_name=SERVER_NAME, tls_dir=tls,
                          batch_linger=0.0, batch_records=100,
                          upload_deadline=0.0)
    return UplinkService(
        reactor, journal, Traffic(journal.path), host=config.host, port=config.port,
        server_name=config.server_name, identity_loader=lambda: DeviceIdentity.load(tls),
        settings=LinkSettings.from_config(EdgeConfig("1.0", "A"), config),
        backoff=ReconnectPolicy(0.05, 0.2, 2.0, 60.0), connect_timeout=config.connect_timeout,
        budget_bytes=BUDGET,
    )


@pytest_twisted.ensureDeferred
async def test_cloud_counts_the_bytes_the_edge_counted_and_the_api_serves_them(
    tmp_path: Path, cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    # A long flush interval: what is written here is written at connection close and stop.
    cloud = await start_cloud(reactor, cloud_pki, pg_dsn, traffic_flush_interval=3600.0)
    journal = Journal(tmp_path / "data" / "journal.db", max_bytes=10 << 20)
    journal.open()
    journal.append([rec(i) for i in range(250)])
    uplink = make_uplink(journal, cloud_pki.edge("bbb-0042"), cloud.port.getHost().port)
    uplink.startService()
    try:
        await wait_until(reactor, lambda: journal.pending == 0, "the first records stored", 20)
        # The cloud cuts the connection: its counts are written soon after, without a flush tick.
        for protocol in list(cloud.listener.factory.connections):
            protocol.abort()
        await wait_until(reactor, lambda: stored(pg_dsn, "bbb-0042"), "a flush at close", 10)
        await wait_until(reactor, lambda: uplink.status().connections == 2, "a reconnect", 20)
        journal.append([rec(i) for i in range(250, 300)])
        await wait_until(reactor, lambda: journal.pending == 0, "the later records stored", 20)
    finally:
        await uplink.stopService()  # closes cleanly and writes the edge's own counts
        journal.close()
    try:
        await wait_until(reactor, lambda: not cloud.listener.factory.connections, "the close", 10)
        await wait_until(reactor, lambda: not cloud.traffic.unwritten(), "the last flush", 10)
    finally:
        await cloud.stopService()
    edge = Traffic(journal.path).per_day()
    cloud_days = stored(pg_dsn, "bbb-0042")
    assert set(cloud_days) == set(edge) and cloud.traffic.failures == 0
    up = sum(u for u, _ in cloud_days.values())
    down = sum(d for _, d in cloud_days.values())
    sent = sum(s for s, _ in edge.values())
    received = sum(r for _, r in edge.values())
    print(f"\nedge counted {sent} B sent / {received} B received; "
          f"cloud counted {up} B up / {down} B down")
    connections = uplink.status().connections
    assert connections == 2 and up > 1000 and received > 1000
    assert 0 <= sent - up <= connections * CLOSE_NOTIFY
    assert 0 <= down - received <= connections * CLOSE_NOTIFY

    # The API serves what is stored, today's numbers in the edge and every day in its history.
    admin = keys.create_key(pg_dsn, "traffic-reader", ["read"])
    for api in running_api(pg_dsn, tmp_path / "api.log"):
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        one = api.get("/v1/edges/bbb-0042", admin).json()
        assert (one["bytes_up_today"], one["bytes_down_today"]) == cloud_days.get(today, (0, 0))
        # the budget as the unit's last Hello said it, beside the cloud's count of the month
        month = today[:7]
        counted_month = sum(u + d for day, (u, d) in cloud_days.items() if day[:7] == month)
        assert one["budget_bytes_per_month"] == BUDGET
        assert one["month_bytes"] == counted_month
        reported = one["month_bytes_reported"]
        assert reported is not None and 0 <= reported <= sent + received  # as of its Hello
        assert one["budget_used"] == round(max(counted_month, reported) / BUDGET, 4)
        history = api.get("/v1/edges/bbb-0042/traffic", admin).json()
        assert [(d["day"], d["bytes_up"], d["bytes_down"]) for d in history["items"]] == [
            (day, u, d) for day, (u, d) in sorted(cloud_days.items(), reverse=True)]


def counted(factory: CountingFactory, edge_id: str | None, up: int, down: int
            ) -> TrafficCounter:
    """A counted connection (on an in-memory transport) that received ``up`` bytes and sent
    ``down``, attributed to ``edge_id``."""
    counter = factory.buildProtocol(None)
    counter.makeConnection(StringTransport())
    counter.dataReceived(b"u" * up)
    counter.write(b"d" * down)
    if edge_id is not None:
        counter.attribute(edge_id)
    return counter


@pytest_twisted.ensureDeferred
async def test_flushes_add_up_across_nodes_days_and_failures(pg_dsn: str) -> None:
    """Two nodes' ledgers add to the same rows; a day boundary splits counts; a failed flush
    keeps its counts for the next; a tick writes live connections; a stop during a flush
    writes what came meanwhile; the unnamed are not written; nothing is written twice."""
    migrations.migrate(pg_dsn)
    store = IngestStore(reactor, pg_dsn, 1)
    await store.start()
    clock = task.Clock()
    clock.advance(20_000 * DAY + DAY - 10)  # 2024-10-04T23:59:50Z
    nodes = [EdgeTraffic(store.add_traffic, clock, interval=60.0) for _ in range(2)]
    factories = [CountingFactory(Factory.forProtocol(Protocol), ledger) for ledger in nodes]
    for ledger in nodes:
        ledger.start()
    try:
        a = counted(factories[0], "e1", 100, 10)
        b = counted(factories[1], "e1", 1000, 20)
        stranger = counted(factories[0], None, 5, 5)  # never named an edge
        clock.advance(60)  # the tick: live connections written, past midnight now
        await nodes[0].flush()
        await nodes[1].flush()
        assert stored(pg_dsn, "e1") == {"2024-10-04": (1100, 30)}
        a.dataReceived(b"x" * 7)  # 2024-10-05 from here on
        query(pg_dsn, "ALTER TABLE edge_traffic RENAME TO edge_traffic_away")
        a.connectionLost(None)  # a flush at close, which fails
        stranger.connectionLost(None)
        clock.advance(0)
        await wait_until(reactor, lambda: nodes[0].failures == 1, "the failed flush", 5)
        assert nodes[0].unwritten() == {("e1", "2024-10-05"): [7, 0]}
        query(pg_dsn, "ALTER TABLE edge_traffic_away RENAME TO edge_traffic")
        b.write(b"y" * 3)
        running = nodes[1].flush()
        b.write(b"z" * 2)  # counted while that flush runs: the stop's flush writes it after
        await nodes[0].stop()
        await nodes[1].stop()
        await running
        assert stored(pg_dsn, "e1") == {"2024-10-04": (1100, 30), "2024-10-05": (7, 5)}
        assert nodes[0].unattributed == 10 and nodes[0].unwritten() == {}
        assert nodes[1].unwritten() == {}
        b.connectionLost(None)  # after the node stopped: nothing schedules another flush
        clock.advance(120)
        assert stored(pg_dsn, "e1")["2024-10-05"] == (7, 5)
    finally:
        store.close()
