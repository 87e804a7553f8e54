"""gridcloud.ingest: exactly-once storage of batches and events through txpostgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg2
import pytest
import pytest_twisted
from gridcloud import migrations, revocation
from gridcloud.connection import EdgeInfo, EdgeRefused
from gridcloud.ingest import BIGINT_MAX, BadBatch, IngestStore
from gridwire import ReadingBatch

from support.cloud_harness import T0, batch, query, within


def reactor():
    from twisted.internet import reactor as r

    return r


@pytest_twisted.async_yield_fixture
async def store(pg_dsn: str) -> AsyncIterator[IngestStore]:
    """An IngestStore (pool of 2) over a migrated database with edge 'e1' admitted."""
    migrations.migrate(pg_dsn)
    s = IngestStore(reactor(), pg_dsn, pool_size=2)
    await within(reactor(), s.start(), 10)
    await within(reactor(), s.admit(EdgeInfo("e1", 1, "127.0.0.1:1")), 10)
    yield s
    s.close()


async def write(store: IngestStore, b: ReadingBatch, edge: str = "e1") -> int:
    return await within(reactor(), store.write_batch(edge, b.first_seq, b.columns.as_tuple()), 10)


def stored(dsn: str) -> list[tuple]:
    return query(dsn, "SELECT seq, meter_id, energy_wh FROM readings ORDER BY seq")


@pytest_twisted.ensureDeferred
async def test_same_batch_twice_is_stored_once(store: IngestStore, pg_dsn: str) -> None:
    """Writing the same batch again changes nothing and reports it as already stored."""
    b = batch(1, 50)
    assert await write(store, b) == 0
    assert await write(store, b) == 50
    rows = stored(pg_dsn)
    assert [r[0] for r in rows] == list(range(1, 51))
    assert rows[0] == (1, 1, 1000) and rows[-1] == (50, 50, 1049)
    assert query(pg_dsn, "SELECT last_seq, readings_total FROM edges") == [(50, 50)]


@pytest_twisted.ensureDeferred
async def test_overlapping_batches_store_each_sequence_number_once(
    store: IngestStore, pg_dsn: str
) -> None:
    """A batch overlapping what is stored adds only its new tail, with the tail's own values."""
    await write(store, batch(1, 10))
    await write(store, batch(6, 10, first_meter=100, energy=5000))  # seq 6..15, 6..10 are old
    rows = stored(pg_dsn)
    assert [r[0] for r in rows] == list(range(1, 16))
    assert rows[4] == (5, 5, 1004)  # from the first batch
    assert rows[5] == (6, 5 + 1, 1005)  # still the first batch's record for seq 6
    assert rows[10] == (11, 105, 5005)  # seq 11 is record 5 of the second batch


@pytest_twisted.ensureDeferred
async def test_meter_state_follows_the_newest_interval(store: IngestStore, pg_dsn: str) -> None:
    """meters keeps the newest interval per meter; a late, older interval does not overwrite it."""
    await write(store, batch(1, 3, interval_end=T0 + 900, energy=2000))
    await write(store, batch(4, 3, interval_end=T0, energy=1000))  # older intervals, sent later
    state = query(
        pg_dsn,
        "SELECT meter_id, energy_wh,"
        " extract(epoch FROM last_interval_end)::bigint,"
        " edge_id FROM meters ORDER BY meter_id",
    )
    assert state == [(m, 1999 + m, T0 + 900, "e1") for m in (1, 2, 3)]


@pytest_twisted.ensureDeferred
async def test_a_gap_is_counted_and_the_rest_stored(store: IngestStore, pg_dsn: str) -> None:
    """Records the edge dropped (a seq gap) are counted in seq_gaps_total; later ones are stored."""
    await write(store, batch(1, 5))
    assert await write(store, batch(11, 5)) == 5
    counters = query(pg_dsn, "SELECT last_seq, seq_gaps_total, readings_total FROM edges")
    assert counters == [(15, 5, 10)]


@pytest_twisted.ensureDeferred
async def test_events_share_the_high_water_mark(store: IngestStore, pg_dsn: str) -> None:
    """An event takes one journal sequence number: stored once; later batches continue after it."""
    await write(store, batch(1, 5))
    assert await within(reactor(), store.write_event("e1", 6, 3, T0, 2, "tamper"), 10) == 5
    assert await within(reactor(), store.write_event("e1", 6, 3, T0, 2, "tamper"), 10) == 6
    assert await write(store, batch(7, 2)) == 6
    assert query(pg_dsn, "SELECT seq, meter_id, kind, detail FROM events") == [(6, 3, 2, "tamper")]
    assert query(pg_dsn, "SELECT count(*), max(seq) FROM readings") == [(7, 8)]


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_of_one_edge_never_duplicate(
    store: IngestStore, pg_dsn: str
) -> None:
    """Two sessions of one edge replaying the same batches at once still store each record once."""
    from twisted.internet import defer

    batches = [batch(1 + 20 * i, 20) for i in range(5)]
    ds = []
    for b in batches:  # interleave: both "sessions" send b before moving on
        ds.append(store.write_batch("e1", b.first_seq, b.columns.as_tuple()))
        ds.append(store.write_batch("e1", b.first_seq, b.columns.as_tuple()))
    await within(reactor(), defer.gatherResults(ds), 20)
    stats = query(pg_dsn, "SELECT count(*), count(DISTINCT seq), max(seq) FROM readings")
    assert stats == [(100, 100, 100)]


@pytest_twisted.ensureDeferred
async def test_unknown_edge_and_unstorable_values_fail(store: IngestStore) -> None:
    """A batch for an unregistered edge, or with energy above bigint, fails instead of storing."""
    with pytest.raises(psycopg2.Error, match="unknown edge"):
        await write(store, batch(1, 1), edge="nobody")
    record = batch(1, 1).records[0]._replace(energy_wh=BIGINT_MAX + 1)
    huge = ReadingBatch(first_seq=1, records=[record])
    with pytest.raises(BadBatch):
        await write(store, huge)


@pytest_twisted.ensureDeferred
async def test_admit_registers_new_edges_and_refuses_revoked_ones(
    store: IngestStore, pg_dsn: str
) -> None:
    """admit() creates unknown edges, returns the high-water mark, refuses revoked edges/serials."""
    assert await within(reactor(), store.admit(EdgeInfo("fresh", 7, "p", "2.0", "B")), 10) == 0
    info = query(
        pg_dsn, "SELECT firmware_version, boot_slot, last_peer FROM edges WHERE edge_id = 'fresh'"
    )
    assert info == [("2.0", "B", "p")]
    await write(store, batch(1, 4))
    assert await within(reactor(), store.admit(EdgeInfo("e1", 1, "p")), 10) == 4

    revocation.revoke_edge(pg_dsn, "e1", "stolen")
    with pytest.raises(EdgeRefused, match=r"edge revoked .*stolen"):
        await within(reactor(), store.admit(EdgeInfo("e1", 1, "p")), 10)
    assert revocation.reinstate_edge(pg_dsn, "e1")
    assert await within(reactor(), store.admit(EdgeInfo("e1", 1, "p")), 10) == 4

    revocation.revoke_certificate(pg_dsn, 123456789, "e1", "key leaked")
    with pytest.raises(EdgeRefused, match="serial 123456789 revoked"):
        await within(reactor(), store.admit(EdgeInfo("e1", 123456789, "p")), 10)
    assert await within(reactor(), store.admit(EdgeInfo("e1", 987, "p")), 10) == 4
