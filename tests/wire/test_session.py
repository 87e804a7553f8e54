"""Session rules: which role may send or receive what in which state, and the READY guards."""

from __future__ import annotations

import random

import pytest
from gridwire import (
    Ack,
    ChunkRequest,
    CloudSession,
    Command,
    CommandResult,
    EdgeSession,
    Error,
    ErrorCode,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareStatus,
    Hello,
    IntervalRecord,
    Limits,
    Message,
    Ping,
    Pong,
    ProtocolError,
    ReadingBatch,
    State,
    Welcome,
)
from gridwire._codec import encode_message

HELLO = Hello(min_version=1, max_version=1, firmware_version="1.2.3", boot_slot="A")
WELCOME = Welcome(
    version=1, server_time=1_764_000_000, last_acked_seq=100, heartbeat_interval=60, max_in_flight=2
)
REC = IntervalRecord(
    meter_id=7,
    interval_end=1_764_000_900,
    energy_wh=12_345,
    max_demand_w=800,
    voltage_dv=2301,
    current_ma=3000,
    power_factor=950,
)
OFFER = FirmwareOffer(offer_id=9, version="2.0.0", size=10, sha256=bytes(32), chunk_size=4)


def batch(first: int, n: int = 1) -> ReadingBatch:
    return ReadingBatch(first_seq=first, records=[REC] * n)


def ready_pair() -> tuple[EdgeSession, CloudSession]:
    edge, cloud = EdgeSession(), CloudSession()
    cloud.receive_data(edge.send(HELLO))
    edge.receive_data(cloud.send(WELCOME))
    return edge, cloud


def fresh(role: str, state: str) -> EdgeSession | CloudSession:
    """A session of ``role`` driven into ``state``."""
    edge, cloud = EdgeSession(), CloudSession()
    if state == "START":
        return edge
    if state == "AWAIT_HELLO":
        return cloud
    hello = edge.send(HELLO)
    if state == "AWAIT_WELCOME":
        return edge
    cloud.receive_data(hello)
    if state == "HELLO_RECEIVED":
        return cloud
    edge.receive_data(cloud.send(WELCOME))
    return edge if role == "edge" else cloud


# (role, state, message): sending it is a LOCAL violation
FORBIDDEN_SENDS: list[tuple[str, str, Message]] = [
    ("edge", "START", batch(101)),
    ("edge", "START", Ping()),
    ("edge", "AWAIT_WELCOME", HELLO),
    ("edge", "AWAIT_WELCOME", batch(101)),
    ("edge", "READY", HELLO),
    ("edge", "READY", Ack(up_to_seq=1)),
    ("edge", "READY", Command(command_id=1, kind=1)),
    ("edge", "READY", WELCOME),
    ("cloud", "AWAIT_HELLO", WELCOME),
    ("cloud", "AWAIT_HELLO", Ack(up_to_seq=0)),
    ("cloud", "HELLO_RECEIVED", Command(command_id=1, kind=1)),
    ("cloud", "READY", batch(101)),
    ("cloud", "READY", HELLO),
    ("cloud", "READY", CommandResult(command_id=1, status=0)),
    ("cloud", "READY", EventReport(seq=101, meter_id=1, time=1, kind=1)),
]


@pytest.mark.parametrize(("role", "state", "message"), FORBIDDEN_SENDS)
def test_forbidden_send_is_local_error(role: str, state: str, message: Message) -> None:
    """Sending a message the role/state does not allow raises a LOCAL error naming all three."""
    session = fresh(role, state)
    with pytest.raises(ProtocolError) as info:
        session.send(message)
    assert info.value.local and info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert type(message).__name__ in str(info.value)
    assert role in str(info.value) and state in str(info.value)
    assert session.state is State.ERROR


# (role, state, message): receiving it is a REMOTE violation
FORBIDDEN_RECEIVES: list[tuple[str, str, Message]] = [
    ("edge", "AWAIT_WELCOME", Ack(up_to_seq=1)),
    ("edge", "AWAIT_WELCOME", Ping()),
    ("edge", "READY", batch(101)),
    ("edge", "READY", HELLO),
    ("edge", "READY", WELCOME),
    ("cloud", "AWAIT_HELLO", batch(101)),
    ("cloud", "AWAIT_HELLO", WELCOME),
    ("cloud", "HELLO_RECEIVED", batch(101)),
    ("cloud", "HELLO_RECEIVED", HELLO),
    ("cloud", "READY", HELLO),
    ("cloud", "READY", Ack(up_to_seq=100)),
    ("cloud", "READY", Command(command_id=1, kind=1)),
]


@pytest.mark.parametrize(("role", "state", "message"), FORBIDDEN_RECEIVES)
def test_forbidden_receive_is_remote_error(role: str, state: str, message: Message) -> None:
    """Receiving a message the role/state does not allow raises a REMOTE error."""
    session = fresh(role, state)
    with pytest.raises(ProtocolError) as info:
        session.receive_data(encode_message(message))
    assert info.value.remote and info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert session.state is State.ERROR


def test_after_error_only_error_may_be_sent() -> None:
    """In ERROR a session refuses to receive and to send, except one Error, which closes it."""
    edge = EdgeSession()
    with pytest.raises(ProtocolError):
        edge.receive_data(b"\x00")
    assert edge.state is State.ERROR
    with pytest.raises(ProtocolError):
        edge.receive_data(b"")
    with pytest.raises(ProtocolError):
        edge.send(HELLO)
    assert edge.state is State.ERROR
    data = edge.send(Error(code=ErrorCode.MALFORMED_FRAME, detail="empty frame"))
    assert edge.state is State.CLOSED
    assert CloudSession().receive_data(data) == [
        Error(code=ErrorCode.MALFORMED_FRAME, detail="empty frame")
    ]
    with pytest.raises(ProtocolError):
        edge.send(Error(code=ErrorCode.MALFORMED_FRAME))
    assert edge.state is State.CLOSED


def test_received_error_closes_and_drops_what_follows() -> None:
    """An Error from the peer closes the session; frames after it in the same chunk are dropped."""
    edge, cloud = ready_pair()
    wire = cloud.send(Error(code=ErrorCode.SHUTTING_DOWN)) + encode_message(Ping())
    assert edge.receive_data(wire) == [Error(code=ErrorCode.SHUTTING_DOWN)]
    assert edge.state is State.CLOSED and cloud.state is State.CLOSED


def test_version_negotiation_picks_common_version() -> None:
    """The cloud picks the highest common version; with none it can only send Error."""
    cloud = CloudSession()
    cloud.receive_data(
        encode_message(Hello(min_version=1, max_version=7, firmware_version="9", boot_slot="B"))
    )
    assert cloud.choose_version() == 3
    other = CloudSession()
    other.receive_data(
        encode_message(Hello(min_version=4, max_version=5, firmware_version="9", boot_slot="B"))
    )
    assert other.choose_version() is None
    with pytest.raises(ProtocolError) as info:
        other.send(Welcome(version=4, server_time=0, last_acked_seq=0))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION and info.value.local
    assert other.send(Error(code=ErrorCode.UNSUPPORTED_VERSION))


def test_edge_refuses_welcome_outside_its_range() -> None:
    """A Welcome choosing a version the edge did not offer is a remote UNSUPPORTED_VERSION."""
    edge = EdgeSession()
    edge.send(HELLO)
    with pytest.raises(ProtocolError) as info:
        edge.receive_data(encode_message(Welcome(version=2, server_time=0, last_acked_seq=0)))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION and info.value.remote


def test_welcome_sets_resume_point_and_window() -> None:
    """After Welcome both sides agree on the resume point, next sequence number and window."""
    edge, cloud = ready_pair()
    assert edge.state is cloud.state is State.READY
    assert edge.version == cloud.version == 1
    assert edge.last_acked_seq == cloud.last_acked_seq == 100
    assert edge.next_seq == 101 and edge.window == 2 and edge.can_upload


def test_upload_sequence_must_increase() -> None:
    """Uploads must start above the resume point and above every earlier upload."""
    edge, _ = ready_pair()
    with pytest.raises(ProtocolError) as info:
        edge.send(batch(100))
    assert info.value.code is ErrorCode.SEQUENCE_ERROR and info.value.local
    edge, cloud = ready_pair()
    cloud.receive_data(edge.send(batch(101, 5)))
    with pytest.raises(ProtocolError) as info:
        cloud.receive_data(encode_message(EventReport(seq=105, meter_id=1, time=1, kind=1)))
    assert info.value.code is ErrorCode.SEQUENCE_ERROR and info.value.remote


def test_flow_control_window() -> None:
    """Beyond max_in_flight unacked uploads the edge refuses to send and the cloud to receive."""
    edge, cloud = ready_pair()
    cloud.receive_data(edge.send(batch(101)))
    cloud.receive_data(edge.send(EventReport(seq=102, meter_id=1, time=1, kind=2)))
    assert edge.in_flight == 2 and not edge.can_upload
    with pytest.raises(ProtocolError) as info:
        edge.send(batch(103))
    assert info.value.code is ErrorCode.FLOW_CONTROL and info.value.local
    with pytest.raises(ProtocolError) as info:
        cloud.receive_data(encode_message(batch(103)))
    assert info.value.code is ErrorCode.FLOW_CONTROL and info.value.remote


def test_ack_is_cumulative_and_frees_the_window() -> None:
    """One Ack covers every upload up to its seq; a partial ack keeps the rest in flight."""
    edge, cloud = ready_pair()
    cloud.receive_data(edge.send(batch(101, 10)))
    cloud.receive_data(edge.send(batch(111, 10)))
    edge.receive_data(cloud.send(Ack(up_to_seq=115)))
    assert edge.in_flight == 1 and edge.last_acked_seq == 115
    edge.receive_data(cloud.send(Ack(up_to_seq=120)))
    assert edge.in_flight == 0 and edge.can_upload


@pytest.mark.parametrize("up_to", [99, 121])
def test_ack_outside_sent_range_is_refused(up_to: int) -> None:
    """An Ack below the last one or above any upload is a SEQUENCE_ERROR (no journal loss)."""
    edge, cloud = ready_pair()
    cloud.receive_data(edge.send(batch(101, 20)))
    with pytest.raises(ProtocolError) as info:
        edge.receive_data(encode_message(Ack(up_to_seq=up_to)))
    assert info.value.code is ErrorCode.SEQUENCE_ERROR and info.value.remote
    with pytest.raises(ProtocolError) as info:
        cloud.send(Ack(up_to_seq=up_to))
    assert info.value.code is ErrorCode.SEQUENCE_ERROR and info.value.local


def test_firmware_chunks_must_be_requested_and_exact() -> None:
    """Chunk requests name an offered chunk; a chunk answers a request with its exact length."""
    edge, cloud = ready_pair()
    edge.receive_data(cloud.send(OFFER))
    with pytest.raises(ProtocolError) as info:
        edge.send(ChunkRequest(offer_id=9, index=3))  # 10 bytes / 4 = chunks 0..2
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    edge, cloud = ready_pair()
    edge.receive_data(cloud.send(OFFER))
    cloud.receive_data(edge.send(ChunkRequest(offer_id=9, index=2)))
    with pytest.raises(ProtocolError) as info:
        cloud.send(FirmwareChunk(offer_id=9, index=1, data=b"abcd"))
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE and info.value.local
    edge, cloud = ready_pair()
    edge.receive_data(cloud.send(OFFER))
    cloud.receive_data(edge.send(ChunkRequest(offer_id=9, index=2)))
    with pytest.raises(ProtocolError) as info:
        edge.receive_data(encode_message(FirmwareChunk(offer_id=9, index=2, data=b"abcd")))
    assert info.value.code is ErrorCode.INVALID_FIELD and info.value.remote


def test_ready_traffic_both_ways() -> None:
    """Every READY message each role may send is accepted by the other role."""
    edge, cloud = ready_pair()
    for message in (Command(command_id=5, kind=1, meter_id=7), Ping(nonce=1), Pong(nonce=2), OFFER):
        assert edge.receive_data(cloud.send(message)) == [message]
    for message in (
        CommandResult(command_id=5, status=0),
        Ping(nonce=3),
        Pong(nonce=1),
        ChunkRequest(offer_id=9, index=0),
        FirmwareStatus(offer_id=9, state=1, received=4),
        EventReport(seq=101, meter_id=7, time=5, kind=1, detail="case opened"),
        batch(102),
    ):
        assert cloud.receive_data(edge.send(message)) == [message]
    chunk = FirmwareChunk(offer_id=9, index=0, data=b"abcd")
    assert edge.receive_data(cloud.send(chunk)) == [chunk]


def test_send_rejects_non_messages() -> None:
    """Passing something that is not a message to send is a LOCAL error, not a crash."""
    with pytest.raises(ProtocolError) as info:
        EdgeSession().send("hello")  # type: ignore[arg-type]
    assert info.value.local


def test_local_max_in_flight_caps_the_window() -> None:
    """An edge uses at most its Limits.max_in_flight; a cloud may not offer more than its own."""
    edge = EdgeSession(limits=Limits(max_in_flight=1))
    cloud = CloudSession()
    cloud.receive_data(edge.send(HELLO))
    edge.receive_data(cloud.send(WELCOME))  # offers 2
    assert edge.window == 1 and cloud.window == 2
    small = CloudSession(limits=Limits(max_in_flight=1))
    small.receive_data(encode_message(HELLO))
    with pytest.raises(ProtocolError) as info:
        small.send(WELCOME)
    assert info.value.local and info.value.code is ErrorCode.INVALID_FIELD


def test_sender_refuses_a_frame_above_max_frame_size() -> None:
    """A batch too big for max_frame_size is refused locally instead of sent to be rejected."""
    limits = Limits(max_frame_size=70_000)
    edge, cloud = EdgeSession(limits=limits), CloudSession(limits=limits)
    cloud.receive_data(edge.send(HELLO))
    edge.receive_data(cloud.send(WELCOME))
    rng = random.Random(1)
    noisy = [
        IntervalRecord(*(rng.randrange(2**16) for _ in range(6)), rng.randrange(-1000, 1001), 0)
        for _ in range(8000)
    ]
    with pytest.raises(ProtocolError) as info:
        edge.send(ReadingBatch(first_seq=101, records=noisy))
    assert info.value.local and info.value.code is ErrorCode.FRAME_TOO_LARGE
