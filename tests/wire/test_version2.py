"""Protocol version 2 (batches deflated against the previous batch of the connection) and its
negotiation: v2 with v2, and a v1 peer on either side still works, with v1's encoding."""

from __future__ import annotations

import pytest
from gridwire import (
    Ack,
    CloudSession,
    EdgeSession,
    Hello,
    IntervalRecord,
    ProtocolError,
    ReadingBatch,
    Welcome,
)
from gridwire._batch import decode_batch_primed
from gridwire._varint import Reader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = 1_772_409_600
METERS = [412_003 + 7 * i + (i * i) % 13 for i in range(300)]


def interval(k: int) -> list[IntervalRecord]:
    """300 meters' readings of interval k, in the same (report) order every interval."""
    return [IntervalRecord(m, T0 + 900 * k, 1_000_000 + m % 977 * 1000 + k * (50 + m % 90),
                           300 + (m * k) % 700, 2280 + (m + k) % 40, 1200 + (m * 3 + k) % 900,
                           900 + m % 80, 0) for m in METERS]


def connect(edge_max: int, cloud_versions: tuple[int, ...]) -> tuple[EdgeSession, CloudSession]:
    edge, cloud = EdgeSession(), CloudSession(versions=cloud_versions)
    cloud.receive_data(edge.send(Hello(min_version=1, max_version=edge_max,
                                       firmware_version="1", boot_slot="A")))
    version = cloud.choose_version()
    assert version is not None
    edge.receive_data(cloud.send(Welcome(version=version, server_time=T0, last_acked_seq=0)))
    return edge, cloud


@pytest.mark.parametrize(
    ("edge_max", "cloud_versions", "version"),
    [(2, (1, 2), 2), (1, (1, 2), 1), (2, (1,), 1), (1, (1,), 1)],
    ids=["v2-v2", "v1 edge, v2 cloud", "v2 edge, v1 cloud", "v1-v1"],
)
def test_negotiation_both_ways(edge_max: int, cloud_versions: tuple[int, ...],
                               version: int) -> None:
    """The highest common version wins; a v1 peer on either side gets v1's batches."""
    edge, cloud = connect(edge_max, cloud_versions)
    assert edge.version == cloud.version == version
    sizes = []
    for k in range(1, 4):
        batch = ReadingBatch(first_seq=1 + 300 * (k - 1), records=interval(k))
        data = edge.send(batch)
        sizes.append(len(data))
        assert cloud.receive_data(data) == [batch]
        edge.receive_data(cloud.send(Ack(up_to_seq=batch.last_seq)))
    if version == 2:
        assert sizes[2] < sizes[0] * 0.8  # primed by the previous batch


def test_v2_saves_bytes_against_v1_on_the_same_batches() -> None:
    """Ten intervals of the same meters: v2's frames are clearly smaller than v1's."""
    def total(edge_max: int) -> int:
        edge, cloud = connect(edge_max, (1, 2))
        n = 0
        for k in range(1, 11):
            batch = ReadingBatch(first_seq=1 + 300 * (k - 1), records=interval(k))
            data = edge.send(batch)
            n += len(data)
            assert cloud.receive_data(data) == [batch]
            edge.receive_data(cloud.send(Ack(up_to_seq=batch.last_seq)))
        return n

    assert total(2) < total(1) * 0.85


def test_v1_session_refuses_the_v2_codec() -> None:
    """A v2 batch frame sent on a v1 connection is BAD_BATCH (codec 2 is unknown in v1)."""
    v2_edge, v2_cloud = connect(2, (1, 2))
    first = v2_edge.send(ReadingBatch(first_seq=1, records=interval(1)))
    v2_cloud.receive_data(first)
    v2_edge.receive_data(v2_cloud.send(Ack(up_to_seq=300)))
    second = v2_edge.send(ReadingBatch(first_seq=301, records=interval(2)))
    _, v1_cloud = connect(1, (1, 2))
    v1_cloud.receive_data(first)
    with pytest.raises(ProtocolError) as info:
        v1_cloud.receive_data(second)
    assert info.value.code.name == "BAD_BATCH"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.binary(max_size=200))
def test_primed_decoder_raises_only_protocol_errors(body: bytes, primer: bytes) -> None:
    """Any bytes as a v2 batch body, with any dictionary: a batch or a ProtocolError."""
    for prefix in (b"", b"\x03\x02", b"\x01\x02"):
        try:
            decode_batch_primed(Reader(prefix + body), 50, None, primer)
        except ProtocolError as exc:
            assert exc.remote
