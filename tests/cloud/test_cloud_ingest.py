"""gridcloud.ingest: exactly-once storage of batches and events through txpostgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg2
import pytest
import pytest_twisted
from gridcloud import migrations, revocation
from gridcloud.connection import EdgeInfo, EdgeRefused
from gridcloud.ingest import IngestStore
from gridwire import EventReport, ReadingBatch
from twisted.internet import defer

from support.cloud_harness import T0, LogCapture, batch, query, within


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
    return await within(reactor(), store.write_batch(edge, b.first_seq, b.columns), 10)


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
    # older intervals, sent later
    await write(store, batch(4, 3, first_meter=1, interval_end=T0, energy=1000))
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
    tamper = EventReport(seq=6, meter_id=3, time=T0, kind=2, detail="tamper")
    assert await within(reactor(), store.write_event("e1", tamper), 10) == 5
    assert await within(reactor(), store.write_event("e1", tamper), 10) == 6
    assert await write(store, batch(7, 2)) == 6
    assert query(pg_dsn, "SELECT seq, meter_id, kind, detail FROM events") == [(6, 3, 2, "tamper")]
    assert query(pg_dsn, "SELECT count(*), max(seq) FROM readings") == [(7, 8)]


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_of_one_edge_never_duplicate(
    store: IngestStore, pg_dsn: str
) -> None:
    """Two sessions of one edge replaying the same batches at once still store each record once."""

    batches = [batch(1 + 20 * i, 20) for i in range(5)]
    ds = []
    for b in batches:  # interleave: both "sessions" send b before moving on
        ds.append(store.write_batch("e1", b.first_seq, b.columns))
        ds.append(store.write_batch("e1", b.first_seq, b.columns))
    await within(reactor(), defer.gatherResults(ds), 20)
    stats = query(pg_dsn, "SELECT count(*), count(DISTINCT seq), max(seq) FROM readings")
    assert stats == [(100, 100, 100)]


@pytest_twisted.ensureDeferred
async def test_unknown_edge_fails(store: IngestStore) -> None:
    """A batch for an unregistered edge fails instead of storing (a bug, not a bad record)."""
    with pytest.raises(psycopg2.Error, match="unknown edge"):
        await write(store, batch(1, 1), edge="nobody")


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


# -- issue 10 point 5: exactly once on the natural key (meter_id, interval_end) ------------------


@pytest_twisted.ensureDeferred
async def test_point5_renumbered_journal_stores_each_reading_once(
    store: IngestStore, pg_dsn: str, logs: LogCapture
) -> None:
    """A journal restored from an old copy resends stored readings under new sequence numbers:
    they are skipped on (meter_id, interval_end); one whose values differ is counted and logged."""
    assert await write(store, batch(1, 10)) == 0
    renumbered = batch(11, 10, first_meter=1).records  # the same ten readings at seq 11..20
    changed = renumbered[3]._replace(energy_wh=9999)  # meter 4's reading, with another value
    resent = ReadingBatch(first_seq=11, records=[*renumbered[:3], changed, *renumbered[4:]])
    new = batch(21, 5, first_meter=1, interval_end=T0 + 900)  # the next interval: new readings
    assert await write(store, resent) == 10
    assert await write(store, new) == 20
    assert query(pg_dsn, "SELECT count(*) FROM readings") == [(15,)]
    meter4 = "SELECT seq, energy_wh FROM readings WHERE meter_id = 4 ORDER BY seq"
    assert query(pg_dsn, meter4) == [(4, 1003), (24, 1003)]  # the first value is kept
    counters = query(
        pg_dsn, "SELECT last_seq, readings_total, duplicates_total, conflicts_total FROM edges"
    )
    assert counters == [(25, 15, 10, 1)]
    (line,) = logs.matching("e1", "differ")
    assert "meter 4" in line and f"{T0}" in line


@pytest_twisted.ensureDeferred
async def test_point5_wiped_journal_backfill_is_not_stored_again(
    store: IngestStore, pg_dsn: str
) -> None:
    """After a wipe the edge numbers from 1 again (rebased past the cloud's mark) and back-fills
    readings the cloud has: none is stored twice, new ones are."""
    await write(store, batch(1, 20))
    backfill = [*batch(1, 20).records, *batch(1, 20, interval_end=T0 + 900).records]  # meters 1..20
    assert await write(store, ReadingBatch(first_seq=21, records=backfill)) == 20
    rows = query(pg_dsn, "SELECT count(*), count(DISTINCT (meter_id, interval_end)) FROM readings")
    assert rows == [(40, 40)]


# -- issue 10 point 1: a record the database cannot store is set aside, not retried for ever -----


def dead_letters(dsn: str) -> list[tuple]:
    return query(dsn, "SELECT seq, kind, reason FROM dead_letters ORDER BY seq")


@pytest_twisted.ensureDeferred
async def test_point1_poison_records_go_to_dead_letters_and_the_rest_is_stored(
    store: IngestStore, pg_dsn: str
) -> None:
    """energy_wh = 2**63 cannot be a bigint: that record is dead-lettered with its reason and
    its values, the good records around it are stored, and the high-water mark passes it."""
    good = batch(1, 5).records
    poison = good[2]._replace(energy_wh=2**63)
    b = ReadingBatch(first_seq=1, records=[*good[:2], poison, *good[3:]])
    assert await write(store, b) == 0
    assert [r[0] for r in stored(pg_dsn)] == [1, 2, 4, 5]
    ((seq, kind, reason),) = dead_letters(pg_dsn)
    assert (seq, kind) == (3, "reading") and "energy_wh" in reason
    (record,) = query(pg_dsn, "SELECT record::text FROM dead_letters")[0]
    assert str(2**63) in record
    assert query(pg_dsn, "SELECT last_seq, dead_letters_total FROM edges") == [(5, 1)]
    assert await write(store, b) == 5  # sent again: nothing new, nothing twice
    assert len(dead_letters(pg_dsn)) == 1


@pytest_twisted.ensureDeferred
async def test_point1_unstorable_events_go_to_dead_letters(store: IngestStore, pg_dsn: str) -> None:
    """Event times of 10**13 and 2**63 s and a detail with NUL are dead-lettered and passed."""
    for seq, time, detail in ((1, 10**13, "far"), (2, 2**63, "farther"), (3, T0, "a\x00b")):
        event = EventReport(seq=seq, meter_id=7, time=time, kind=1, detail=detail)
        assert await within(reactor(), store.write_event("e1", event), 10) == seq - 1
    fine = EventReport(seq=4, meter_id=7, time=T0, kind=1, detail="fine")
    assert await within(reactor(), store.write_event("e1", fine), 10) == 3
    assert [(s, k) for s, k, _ in dead_letters(pg_dsn)] == [(n, "event") for n in (1, 2, 3)]
    reasons = [r for _, _, r in dead_letters(pg_dsn)]
    assert "time" in reasons[0] and "time" in reasons[1] and "NUL" in reasons[2]
    assert query(pg_dsn, "SELECT seq, detail FROM events") == [(4, "fine")]
    assert query(pg_dsn, "SELECT last_seq FROM edges") == [(4,)]


@pytest_twisted.ensureDeferred
async def test_health_summaries_keep_the_latest_exactly_once(
    store: IngestStore, pg_dsn: str
) -> None:
    """A HEALTH_SUMMARY takes its journal seq like any upload, becomes the edge's latest
    summary (not an event row); a repeat changes nothing; an older one arriving after a newer
    one (a backlog) moves the mark but not the summary; an unreadable one is a plain event."""
    from gridwire import AlarmKind

    def summary(seq: int, at: int, detail: str) -> EventReport:
        return EventReport(seq=seq, meter_id=0, time=at, kind=AlarmKind.HEALTH_SUMMARY,
                           detail=detail)

    def health() -> list[tuple]:
        return query(pg_dsn, "SELECT last_seq, health, extract(epoch FROM health_at)::bigint "
                             "FROM edges WHERE edge_id = 'e1'")

    newer = summary(1, T0 + 600, "b=3 u=100 zz=1")
    assert await within(reactor(), store.write_event("e1", newer), 10) == 0
    assert await within(reactor(), store.write_event("e1", newer), 10) == 1
    assert health() == [(1, {"journal_backlog": 3, "uptime": 100}, T0 + 600)]
    older = summary(2, T0, "b=9")
    assert await within(reactor(), store.write_event("e1", older), 10) == 1
    assert health() == [(2, {"journal_backlog": 3, "uptime": 100}, T0 + 600)]
    assert query(pg_dsn, "SELECT count(*) FROM events") == [(0,)]
    broken = summary(3, T0 + 900, "b=x")
    assert await within(reactor(), store.write_event("e1", broken), 10) == 2
    assert query(pg_dsn, "SELECT seq, detail FROM events") == [(3, "b=x")]
    assert health()[0][0] == 3
