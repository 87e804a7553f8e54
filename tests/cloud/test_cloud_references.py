"""Protocol version 3's reference tables on the cloud: stored per edge in PostgreSQL (migration
0013), loaded at admission on any node, written after each batch as a conditional chain
(gridcloud.references, gridcloud.refchain).  Real TLS, real PostgreSQL, a gridwire edge."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from gridcloud.refchain import RESET, ReferenceKeeper
from gridcloud.server import CloudService
from gridedge import loadgen
from gridwire import EdgeReferences, IntervalRecord, ReadingBatch, RecordColumns, ReferenceTable

from support.cloud_harness import (
    CloudPKI,
    endpoint_of,
    hello,
    query,
    start_cloud,
    wait_until,
    within,
)

T0 = 1_772_409_600
METERS = [412_003 + 7 * i + (i * i) % 13 for i in range(200)]


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def interval(k: int) -> list[IntervalRecord]:
    return [IntervalRecord(m, T0 + 900 * k, 2**40 + m % 977 * 1000 + k * (50 + m % 90),
                           300 + (m * k) % 700, 2280 + (m + k) % 40, 1200 + (m * 3 + k) % 900,
                           900 + m % 80, 0) for m in METERS]


def stored(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT as_of_seq, meters FROM edge_references WHERE edge_id = 'edge-1'")


class Unit:
    """An edge whose reference table outlives its connections, as gridedge's uplink keeps it."""

    def __init__(self, cloud_pki: CloudPKI) -> None:
        self.tls = cloud_pki.client_tls(cloud_pki.edge("edge-1"))
        self.references = EdgeReferences()
        self.next_seq = 1

    async def connect(self, service: CloudService) -> loadgen.EdgeClient:
        client, _ = await loadgen.connect(
            reactor(), endpoint_of(service), self.tls,
            hello(max_version=3, references=self.references.offer),
            references=self.references)
        await within(reactor(), client.welcome, 10)
        return client

    @staticmethod
    async def close(client: loadgen.EdgeClient) -> None:
        client.transport.loseConnection()
        await within(reactor(), client.lost, 10)


def readings(dsn: str) -> list[tuple[int, ...]]:
    rows = query(dsn, "SELECT meter_id, extract(epoch FROM interval_end)::bigint, energy_wh,"
                      " max_demand_w, voltage_dv, current_ma, power_factor, flags"
                      " FROM readings ORDER BY seq")
    return [tuple(int(v) for v in row) for row in rows]


@pytest_twisted.ensureDeferred
async def test_references_across_a_reconnect_and_a_cloud_restart(
    cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """The table is stored after each batch, offered back on the next connection and loaded
    by a freshly started cloud (no cache): every reading decodes to what was sent."""
    service = await start_cloud(reactor(), cloud_pki, pg_dsn)
    unit = Unit(cloud_pki)
    sent: list[IntervalRecord] = []
    try:
        client = await unit.connect(service)
        assert client.session.version == 3
        welcome = await client.welcome
        assert welcome.references is None  # nothing kept yet: both start empty
        for k in (1, 2):
            await within(reactor(), client.upload(
                ReadingBatch(first_seq=unit.next_seq, records=interval(k))), 10)
            unit.next_seq += len(METERS)
            sent += interval(k)
        await wait_until(reactor(), lambda: stored(pg_dsn) == [(400, 200)], "table stored")
        await Unit.close(client)
        assert unit.references.offer == 400

        client = await unit.connect(service)  # a reconnect: the stored table is agreed on
        assert (await client.welcome).references == 400
        await within(reactor(), client.upload(
            ReadingBatch(first_seq=unit.next_seq, records=interval(3))), 10)
        unit.next_seq += len(METERS)
        sent += interval(3)
        await wait_until(reactor(), lambda: stored(pg_dsn) == [(600, 200)], "table stored")
        await Unit.close(client)
    finally:
        await service.stopService()

    service = await start_cloud(reactor(), cloud_pki, pg_dsn)  # a restarted node: no cache
    try:
        client = await unit.connect(service)
        assert (await client.welcome).references == 600
        await within(reactor(), client.upload(
            ReadingBatch(first_seq=unit.next_seq, records=interval(4))), 10)
        sent += interval(4)
        await Unit.close(client)
    finally:
        await service.stopService()
    assert readings(pg_dsn) == [tuple(r) for r in sent]


@pytest_twisted.ensureDeferred
async def test_a_stored_table_behind_the_units_is_not_used(
    cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """A stored table older than the unit's (a write that never landed, a restored backup):
    Welcome agrees on none, the unit starts empty and its readings still decode exactly."""
    service = await start_cloud(reactor(), cloud_pki, pg_dsn)
    unit = Unit(cloud_pki)
    try:
        client = await unit.connect(service)
        for k in (1, 2):
            await within(reactor(), client.upload(
                ReadingBatch(first_seq=unit.next_seq, records=interval(k))), 10)
            unit.next_seq += len(METERS)
        await wait_until(reactor(), lambda: stored(pg_dsn) == [(400, 200)], "table stored")
        await Unit.close(client)
        query(pg_dsn, "UPDATE edge_references SET as_of_seq = 200")  # behind the unit's 400
        client = await unit.connect(service)
        assert (await client.welcome).references is None
        assert unit.references.offer is None
        await within(reactor(), client.upload(
            ReadingBatch(first_seq=unit.next_seq, records=interval(3))), 10)
        await wait_until(reactor(), lambda: stored(pg_dsn) == [(600, 200)], "table replaced")
        await Unit.close(client)
    finally:
        await service.stopService()
    assert readings(pg_dsn)[-len(METERS):] == [tuple(r) for r in interval(3)]


def test_a_table_survives_its_storage_form() -> None:
    table = ReferenceTable()
    table.apply(RecordColumns.from_records(interval(1)))
    table.apply(RecordColumns.from_records(interval(2)[:50]))
    again = ReferenceTable.from_bytes(table.to_bytes())
    assert again.as_columns() == table.as_columns()
    assert len(table.to_bytes()) < 16 * len(METERS)


class Writes:
    """A fake saver that answers when told (the order of PostgreSQL's answers)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, Any, Any]] = []
        self.broken: list[str] = []

    def __call__(self, expected: int, as_of: int, table: ReferenceTable, done: Any,
                 failed: Any) -> None:
        self.calls.append((expected, as_of, done, failed))


@pytest.mark.parametrize("agreed", [None, 40])
def test_the_chain_writes_in_order_and_only_the_newest_waiting(agreed: int | None) -> None:
    writes = Writes()
    keeper = ReferenceKeeper(agreed, writes, writes.broken.append)
    table = ReferenceTable()
    keeper.committed(50, table)
    keeper.committed(60, table)
    keeper.committed(70, table)  # replaces 60, still waiting behind 50
    assert [(e, a) for e, a, _, _ in writes.calls] == [(RESET if agreed is None else 40, 50)]
    writes.calls[0][2](True)
    assert [(e, a) for e, a, _, _ in writes.calls][1:] == [(50, 70)]
    writes.calls[1][2](True)
    assert keeper.expected == 70 and not writes.broken


def test_a_failed_condition_or_write_breaks_the_chain_for_good() -> None:
    writes = Writes()
    keeper = ReferenceKeeper(40, writes, writes.broken.append)
    keeper.committed(50, ReferenceTable())
    writes.calls[0][2](False)
    keeper.committed(60, ReferenceTable())
    assert len(writes.calls) == 1 and keeper.expected is None
    assert writes.broken == ["the stored table is no longer as of 40"]
    writes = Writes()
    keeper = ReferenceKeeper(40, writes, writes.broken.append)
    keeper.committed(50, ReferenceTable())
    writes.calls[0][3](ConnectionError("database gone"))
    assert keeper.expected is None and writes.broken == ["database gone"]
