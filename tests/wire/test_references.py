"""Protocol version 3: reference tables kept for the whole connection and across reconnects
(gridwire._references), negotiation with version 1 and 2 peers both ways, and fuzzing of
the decoder with a table behind it."""

from __future__ import annotations

import pytest
from gridwire import (
    Ack,
    CloudSession,
    EdgeReferences,
    EdgeSession,
    ErrorCode,
    Hello,
    IntervalRecord,
    ProtocolError,
    ReadingBatch,
    RecordColumns,
    ReferenceTable,
    Welcome,
    agreed_references,
)
from gridwire._codec import encode_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.wire_strategies import reading_batches

T0 = 1_772_409_600
METERS = [412_003 + 7 * i + (i * i) % 13 for i in range(300)]


def interval(k: int, meters: list[int] = METERS) -> list[IntervalRecord]:
    """The meters' readings of interval k, in the same (report) order every interval."""
    return [IntervalRecord(m, T0 + 900 * k, 1_000_000 + m % 977 * 1000 + k * (50 + m % 90),
                           300 + (m * k) % 700, 2280 + (m + k) % 40, 1200 + (m * 3 + k) % 900,
                           900 + m % 80, 0) for m in meters]


class Cloud:
    """A cloud that stores its table at every Ack, like gridcloud.references (in memory)."""

    def __init__(self, versions: tuple[int, ...] = (1, 2, 3)) -> None:
        self.versions = versions
        self.stored: tuple[int, ReferenceTable] | None = None
        self.last_acked = 0

    def connect(self, edge: EdgeSession, edge_max: int = 3) -> CloudSession:
        session = CloudSession(versions=self.versions)
        session.stored_references = self.stored
        session.receive_data(edge.send(Hello(
            min_version=1, max_version=edge_max, firmware_version="1", boot_slot="A",
            references=edge.references_offer if edge_max >= 3 else None)))
        version = session.choose_version()
        assert version is not None
        edge.receive_data(session.send(Welcome(
            version=version, server_time=T0, last_acked_seq=self.last_acked,
            references=session.agreed_references(self.last_acked))))
        return session

    def upload(self, edge: EdgeSession, cloud: CloudSession, rows: list[IntervalRecord],
               ack: bool = True) -> tuple[int, ReadingBatch]:
        """One batch from ``edge``: its frame size and what the cloud decoded."""
        data = edge.send(ReadingBatch(first_seq=edge.next_seq, records=rows))
        (batch,) = cloud.receive_data(data)
        assert isinstance(batch, ReadingBatch) and batch.records == tuple(rows)
        if ack:
            self.commit(edge, cloud, batch)
        return len(data), batch

    def commit(self, edge: EdgeSession, cloud: CloudSession, batch: ReadingBatch) -> None:
        self.last_acked = batch.last_seq
        if cloud.version == 3:
            assert cloud._table is not None
            self.stored = (batch.last_seq, cloud._table.copy())
        else:
            self.stored = None
        edge.receive_data(cloud.send(Ack(up_to_seq=batch.last_seq)))


def test_table_keeps_each_meters_latest_record_in_first_seen_order() -> None:
    table = ReferenceTable()
    assert table.as_columns() is None
    table.apply(RecordColumns.from_records(interval(1, [5, 3, 5])))
    table.apply(RecordColumns.from_records(interval(2, [7, 3])))
    columns = table.as_columns()
    assert columns is not None and columns.meter_id == (5, 3, 7)
    assert columns.interval_end == (T0 + 900, T0 + 1800, T0 + 1800)
    copy = table.copy()
    table.apply(RecordColumns.from_records(interval(3, [5])))
    assert copy.as_columns() == columns != table.as_columns()
    assert ReferenceTable(table.rows()).as_columns() == table.as_columns()


def test_a_meter_seen_batches_ago_is_still_a_reference() -> None:
    """Version 2 refers to the previous batch only; version 3 to everything on the link."""
    sizes = {}
    for version in (2, 3):
        cloud = Cloud(versions=tuple(range(1, version + 1)))
        edge = EdgeSession(references=EdgeReferences())
        session = cloud.connect(edge)
        cloud.upload(edge, session, interval(1))
        cloud.upload(edge, session, interval(2, METERS[:10]))  # the others are silent
        sizes[version], _ = cloud.upload(edge, session, interval(3))
    assert sizes[3] < sizes[2] * 0.8, sizes


def test_references_survive_a_reconnect() -> None:
    """The first batch of a new connection refers to the stored table: no cold start."""
    cloud = Cloud()
    refs = EdgeReferences()
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    cold, _ = cloud.upload(edge, session, interval(1))
    warm, _ = cloud.upload(edge, session, interval(2))
    assert refs.offer == 2 * len(METERS)
    # a new connection (a cut): the edge offers its table, the cloud has the same
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    assert edge.welcome is not None and edge.welcome.references == 2 * len(METERS)
    resumed, _ = cloud.upload(edge, session, interval(3))
    assert resumed < cold * 0.75, (cold, warm, resumed)


def test_references_survive_a_cloud_restart_with_an_empty_cache() -> None:
    """A new CloudSession with only what the store kept decodes the next batch exactly."""
    cloud = Cloud()
    refs = EdgeReferences()
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    cloud.upload(edge, session, interval(1))
    assert cloud.stored is not None
    seq, table = cloud.stored
    cloud.stored = (seq, ReferenceTable(table.rows()))  # as loaded back from PostgreSQL
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    cloud.upload(edge, session, interval(2))  # upload() checks every record


def test_lost_ack_the_edge_catches_up_from_its_pending_batches() -> None:
    cloud = Cloud()
    refs = EdgeReferences()
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    cloud.upload(edge, session, interval(1))
    _, second = cloud.upload(edge, session, interval(2), ack=False)
    cloud.last_acked = second.last_seq  # committed and stored, but the Ack never arrived
    assert session._table is not None
    cloud.stored = (second.last_seq, session._table.copy())
    cloud.upload(edge, session, interval(3), ack=False)  # sent, never committed
    assert refs.offer == len(METERS) and len(refs.pending) == 2
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    assert edge.welcome is not None and edge.welcome.references == second.last_seq
    assert refs.offer == second.last_seq and not refs.pending
    cloud.upload(edge, session, interval(3))


def test_a_cloud_without_a_table_starts_both_ends_empty() -> None:
    cloud = Cloud()
    refs = EdgeReferences()
    edge = EdgeSession(references=refs)
    cloud.upload(edge, cloud.connect(edge), interval(1))
    cloud.stored = None  # e.g. a cloud restored from a backup that predates the table
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    assert edge.welcome is not None and edge.welcome.references is None
    assert refs.offer is None
    cloud.upload(edge, session, interval(2))


def test_a_welcome_the_edge_cannot_match_is_refused_and_the_table_forgotten() -> None:
    refs = EdgeReferences()
    refs.committed.apply(RecordColumns.from_records(interval(1)))
    refs.seq = 300
    edge = EdgeSession(references=refs)
    edge.send(Hello(min_version=1, max_version=3, firmware_version="1", boot_slot="A",
                    references=300))
    with pytest.raises(ProtocolError) as info:  # 450 is no batch boundary the edge knows
        edge.receive_data(encode_message(Welcome(version=3, server_time=T0,
                                                 last_acked_seq=450, references=450)))
    assert info.value.code is ErrorCode.INVALID_FIELD and info.value.remote
    assert refs.offer is None


def test_a_welcome_with_references_the_edge_never_offered_is_refused() -> None:
    edge = EdgeSession()
    edge.send(Hello(min_version=1, max_version=3, firmware_version="1", boot_slot="A"))
    with pytest.raises(ProtocolError) as info:
        edge.receive_data(encode_message(Welcome(version=3, server_time=T0,
                                                 last_acked_seq=10, references=10)))
    assert info.value.code is ErrorCode.INVALID_FIELD and info.value.remote


def test_hello_must_offer_what_the_edge_has() -> None:
    refs = EdgeReferences()
    refs.committed.apply(RecordColumns.from_records(interval(1)))
    refs.seq = 300
    with pytest.raises(ProtocolError) as info:
        EdgeSession(references=refs).send(
            Hello(min_version=1, max_version=3, firmware_version="1", boot_slot="A"))
    assert info.value.code is ErrorCode.INVALID_FIELD and info.value.local
    with pytest.raises(ProtocolError):
        Hello(min_version=1, max_version=2, firmware_version="1", boot_slot="A", references=3)


def test_the_cloud_only_agrees_to_a_table_between_the_offer_and_the_commit() -> None:
    assert agreed_references(None, 50, 60) is None
    assert agreed_references(40, None, 60) is None
    assert agreed_references(40, 50, 60) == 50
    assert agreed_references(51, 50, 60) is None  # the cloud's table is older: restored
    assert agreed_references(40, 61, 60) is None
    cloud = CloudSession()
    cloud.stored_references = (50, ReferenceTable())
    cloud.receive_data(encode_message(Hello(min_version=1, max_version=3, firmware_version="1",
                                            boot_slot="A", references=40)))
    with pytest.raises(ProtocolError) as info:  # the table must be sent when agreed
        cloud.send(Welcome(version=3, server_time=T0, last_acked_seq=60))
    assert info.value.code is ErrorCode.INVALID_FIELD and info.value.local


@pytest.mark.parametrize(("edge_max", "cloud_versions", "version"),
                         [(3, (1, 2), 2), (3, (1,), 1), (2, (1, 2, 3), 2), (1, (1, 2, 3), 1)])
def test_version_3_with_older_peers_both_ways(
    edge_max: int, cloud_versions: tuple[int, ...], version: int
) -> None:
    """An older peer gets its version; a version 3 edge's table is dropped once it uploads
    under an older one (the cloud's table no longer follows)."""
    refs = EdgeReferences()
    refs.committed.apply(RecordColumns.from_records(interval(1)))
    refs.seq = 300
    cloud = Cloud(versions=cloud_versions)
    cloud.last_acked = 300
    edge = EdgeSession(references=refs, versions=range(1, edge_max + 1))
    session = cloud.connect(edge, edge_max)
    assert edge.version == session.version == version
    for k in (2, 3):
        cloud.upload(edge, session, interval(k))
    assert refs.offer is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reading_batches(), min_size=1, max_size=4), st.integers(0, 3))
def test_any_batches_round_trip_across_a_reconnect(batches: list[ReadingBatch], cut: int) -> None:
    """Whatever the records, the cloud decodes exactly what the edge sent, before and after
    a reconnect that resumes the table."""
    cloud = Cloud()
    refs = EdgeReferences()
    edge = EdgeSession(references=refs)
    session = cloud.connect(edge)
    for index, batch in enumerate(batches):
        if index == cut:
            edge = EdgeSession(references=refs)
            session = cloud.connect(edge)
        cloud.upload(edge, session, list(batch.records))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading_batches(), st.binary(min_size=1, max_size=300), st.integers(0, 400))
def test_mutated_batches_against_a_table_only_raise_protocol_errors(
    first: ReadingBatch, noise: bytes, where: int
) -> None:
    """A version 3 cloud with a table fed a corrupted batch: messages or ProtocolError."""
    cloud = Cloud()
    edge = EdgeSession(references=EdgeReferences())
    session = cloud.connect(edge)
    cloud.upload(edge, session, list(first.records))
    good = bytearray(edge.send(ReadingBatch(first_seq=edge.next_seq, records=first.records)))
    position = where % len(good)
    good[position:position + len(noise)] = noise
    try:
        session.receive_data(bytes(good))
    except ProtocolError as exc:
        assert exc.remote


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_a_stored_table_that_is_not_one_only_raises_protocol_errors(data: bytes) -> None:
    """What the cloud reads back from its database is decoded like a batch from the wire."""
    try:
        table = ReferenceTable.from_bytes(data)
    except ProtocolError:
        return
    assert ReferenceTable.from_bytes(table.to_bytes()).as_columns() == table.as_columns()
