"""The cloud connection's decisions, driven with task.Clock and bytes in memory.

On the other side is gridwire's real EdgeSession, so every byte the connection reads is a real
frame and every byte it writes is decoded and checked by the edge's rules.  The database is a
store whose answers the test gives by hand (admitted, refused, committed, failed), the log a
real twisted.logger.Logger.  No sockets, no PostgreSQL, no sleeps.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from gridcloud import pki
from gridcloud.config import ServerConfig
from gridcloud.connection import (
    CLOSE_GRACE,
    SILENT,
    EdgeConnection,
    EdgeInfo,
    EdgeRefused,
    Handler,
    StoreUnavailable,
)
from gridcloud.handlers import default_handlers
from gridcloud.sessions import SessionRegistry
from gridwire import (
    Ack,
    CloudSession,
    CommandResult,
    CommandStatus,
    EdgeSession,
    Error,
    ErrorCode,
    EventReport,
    FirmwareState,
    FirmwareStatus,
    Hello,
    IntervalRecord,
    Message,
    MessageType,
    Ping,
    Pong,
    ReadingBatch,
    Welcome,
)
from gridwire._varint import uvarint
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from support.wire_flood import Inflation, count_inflation, flood

PEER = "192.0.2.7:40112"
#: The cloud's clock when a test starts (2026-11-17); the certificates are valid then.
START = 1_795_000_000
CA = pki.make_ca("test CA", now=datetime.datetime.fromtimestamp(START, datetime.UTC))
EDGE_CERT = pki.issue_edge(
    CA, "edge-1", now=datetime.datetime.fromtimestamp(START, datetime.UTC)
).certificate


def clock_at_start() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


def records(first_meter: int, count: int) -> list[IntervalRecord]:
    return [
        IntervalRecord(first_meter + i, 1_795_000_000, 1000 + i, 400, 2300, 1500, 950, 0)
        for i in range(count)
    ]


def hello(**kw: Any) -> Hello:
    values: dict[str, Any] = dict(
        min_version=1, max_version=1, firmware_version="1.2.3", boot_slot="B"
    )
    values.update(kw)
    return Hello(**values)


class Wire:
    """The connection's transport: what it wrote, whether reading is paused, how it closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.paused = False
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not (self.closed or self.aborted), "write after close"
        self.data += data

    def pause_reading(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True

    def resume_reading(self) -> None:
        assert self.paused, "resumed while not paused"
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


@dataclass
class Call:
    """One store call waiting for the test to answer it."""

    args: tuple[Any, ...]
    done: Callable[[int], None]
    failed: Callable[[BaseException], None]


@dataclass
class Store:
    admissions: list[Call] = field(default_factory=list)
    writes: list[Call] = field(default_factory=list)

    def admit(
        self, info: EdgeInfo, done: Callable[[int], None], failed: Callable[[BaseException], None]
    ) -> None:
        self.admissions.append(Call((info,), done, failed))

    def write(
        self,
        edge_id: str,
        upload: ReadingBatch | EventReport,
        done: Callable[[int], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        self.writes.append(Call((edge_id, upload), done, failed))


class Lines:
    """Log observer: the formatted lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        assert "Unable to format event" not in text, text
        self.lines.append(text)

    def matching(self, *needles: str) -> list[str]:
        return [line for line in self.lines if all(n in line for n in needles)]


class Edge:
    """One connection and the edge at its other end (gridwire's real EdgeSession)."""

    def __init__(
        self,
        clock: Clock,
        store: Store,
        sessions: SessionRegistry[EdgeConnection],
        lines: Lines,
        *,
        peer: str = PEER,
        handlers: dict[type[Message], Handler] | None = None,
        **config: Any,
    ) -> None:
        settings: dict[str, Any] = dict(
            hello_timeout=30.0, heartbeat_interval=60, max_in_flight=8, max_pending_uploads=8
        )
        settings.update(config)
        self.wire = Wire()
        self.store = store
        self.session = EdgeSession()
        self.connection = EdgeConnection(
            peer=peer,
            config=ServerConfig(**settings),
            clock=clock,
            store=store,
            transport=self.wire,
            sessions=sessions,
            log=Logger(namespace="gridcloud.server", observer=lines),
            handlers=default_handlers() if handlers is None else handlers,
        )
        self._read = 0

    def send(self, *messages: Message) -> None:
        self.connection.data_received(b"".join(self.session.send(m) for m in messages))

    def received(self) -> list[Message]:
        """Messages the connection wrote since the last call (decoded by the edge's session)."""
        new = bytes(self.wire.data[self._read :])
        self._read = len(self.wire.data)
        return self.session.receive_data(new) if new else []

    def connect(self, certificate: Any = EDGE_CERT, **kw: Any) -> Call:
        """Accept, finish TLS, say Hello: the admission the store now waits to answer."""
        self.connection.connected()
        self.connection.handshake_completed(certificate)
        self.send(hello(**kw))
        return self.store.admissions[-1]

    def admit(self, last_seq: int = 0) -> Welcome:
        self.connect().done(last_seq)
        (welcome,) = self.received()
        assert isinstance(welcome, Welcome)
        return welcome

    def upload(self, first_seq: int, count: int) -> None:
        self.send(ReadingBatch(first_seq=first_seq, records=records(first_seq, count)))

    def errors(self) -> list[tuple[ErrorCode, str]]:
        return [(ErrorCode(m.code), m.detail) for m in self.received() if isinstance(m, Error)]


@dataclass
class Cloud:
    clock: Clock = field(default_factory=clock_at_start)
    store: Store = field(default_factory=Store)
    sessions: SessionRegistry[EdgeConnection] = field(default_factory=SessionRegistry)
    log: Lines = field(default_factory=Lines)

    def edge(self, **kw: Any) -> Edge:
        return Edge(self.clock, self.store, self.sessions, self.log, **kw)


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


# -- admission -----------------------------------------------------------------------------


def test_admission_welcomes_the_edge_after_its_high_water_mark(cloud: Cloud) -> None:
    """Hello is admitted by the store with what the edge said; reading pauses meanwhile;
    Welcome carries the stored high-water mark and the limits, and the connection is the
    edge's live session."""
    cloud.clock.advance(123)
    edge = cloud.edge()
    admission = edge.connect()
    serial = EDGE_CERT.serial_number
    assert admission.args == (EdgeInfo("edge-1", serial, PEER, "1.2.3", "B"),)
    assert edge.wire.paused and edge.received() == []

    admission.done(41)
    assert edge.received() == [
        Welcome(
            version=1,
            server_time=1_795_000_123,
            last_acked_seq=41,
            heartbeat_interval=60,
            max_in_flight=8,
            max_batch_records=ServerConfig().max_batch_records,
            max_frame_size=ServerConfig().max_frame_size,
        )
    ]
    assert not edge.wire.paused
    assert cloud.sessions.get("edge-1") is edge.connection and edge.connection.live
    assert cloud.log.matching(f"edge edge-1 connected from {PEER}, resuming after seq 41")


def test_a_revoked_edge_is_refused_with_the_reason(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.connect().failed(EdgeRefused("edge revoked at 2026-11-26 11:39:27+00: stolen"))
    assert edge.errors() == [
        (ErrorCode.UNAUTHORIZED, "edge revoked at 2026-11-26 11:39:27+00: stolen")
    ]
    assert edge.wire.closed and not edge.wire.paused
    assert cloud.sessions.get("edge-1") is None
    assert cloud.log.matching(f"refused edge edge-1 ({PEER}): edge revoked at", "stolen")


def test_a_database_failure_at_admission_sends_the_edge_away_for_now(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.connect().failed(RuntimeError("server closed the connection unexpectedly"))
    assert edge.errors() == [(ErrorCode.INTERNAL_ERROR, "database unavailable, try later")]
    assert edge.wire.closed
    assert cloud.log.matching("admitting edge edge-1", "failed: server closed the connection")


def test_an_edge_with_no_common_protocol_version_is_refused(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    edge.send(hello(min_version=4, max_version=5))
    assert cloud.store.admissions == []
    assert edge.errors() == [
        (ErrorCode.UNSUPPORTED_VERSION, "no common protocol version (edge speaks 4..5)")
    ]
    assert edge.wire.closed


@pytest.mark.parametrize(
    ("certificate", "why"),
    [
        (None, "no client certificate"),
        (pki.make_ca("someone else's CA").certificate, "invalid edge id"),
    ],
)
def test_a_certificate_that_names_no_edge_is_refused(
    cloud: Cloud, certificate: Any, why: str
) -> None:
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(certificate)
    ((code, detail),) = edge.errors()
    assert code == ErrorCode.UNAUTHORIZED and why in detail
    assert edge.wire.closed
    assert cloud.log.matching(f"refused TLS client {PEER}", why)
    edge.connection.data_received(EdgeSession().send(hello()))  # whatever follows is not read
    assert cloud.store.admissions == []


# -- ingest ----------------------------------------------------------------------------------


def test_uploads_are_stored_one_at_a_time_in_order_and_acked_after_commit(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit(last_seq=0)
    edge.upload(1, 100)
    edge.send(EventReport(seq=101, meter_id=7, time=1_795_000_000, kind=1, detail="tamper"))
    edge.upload(102, 49)
    assert len(cloud.store.writes) == 1  # the next waits for this one's COMMIT
    first = cloud.store.writes[0]
    assert first.args[0] == "edge-1" and first.args[1].first_seq == 1
    assert edge.received() == [] and edge.connection.pending_uploads == 3

    first.done(0)
    assert edge.received() == [Ack(up_to_seq=100)]
    assert len(cloud.store.writes) == 2 and cloud.store.writes[1].args[1].seq == 101
    cloud.store.writes[1].done(100)
    assert edge.received() == [Ack(up_to_seq=101)]
    cloud.store.writes[2].done(101)
    assert edge.received() == [Ack(up_to_seq=150)]
    assert edge.connection.pending_uploads == 0 and len(cloud.store.writes) == 3
    assert not cloud.log.matching("never arrived")


def test_reading_pauses_at_max_pending_uploads_and_resumes_as_commits_complete(
    cloud: Cloud,
) -> None:
    edge = cloud.edge(max_pending_uploads=2)
    edge.admit()
    edge.upload(1, 10)
    assert not edge.wire.paused and not edge.connection.paused
    edge.upload(11, 10)
    assert edge.wire.paused and edge.connection.paused
    edge.upload(21, 10)  # already in the socket's buffer: still queued, in order
    assert edge.connection.pending_uploads == 3

    cloud.store.writes[0].done(0)  # 2 still pending: stay paused
    assert edge.wire.paused
    cloud.store.writes[1].done(10)  # 1 pending: read again
    assert not edge.wire.paused and not edge.connection.paused
    cloud.store.writes[2].done(20)
    assert [m.up_to_seq for m in edge.received() if isinstance(m, Ack)] == [10, 20, 30]


def test_a_gap_in_the_sequence_is_logged_and_acknowledged(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit(last_seq=0)
    edge.upload(11, 5)
    cloud.store.writes[0].done(0)
    assert edge.received() == [Ack(up_to_seq=15)]
    assert cloud.log.matching("edge edge-1: seq 1..10 never arrived (dropped on the edge?)")


def test_point6_database_down_at_admission_refuses_with_a_retry_hint(cloud: Cloud) -> None:
    """The pool says the database is down: the edge hears when to come back, and the log has
    an info line for this edge (the outage itself is the pool's one warning)."""
    edge = cloud.edge()
    edge.connect().failed(StoreUnavailable("database unavailable (down)", 7))
    (error,) = [m for m in edge.received() if isinstance(m, Error)]
    assert (error.code, error.retry_after) == (ErrorCode.INTERNAL_ERROR, 7)
    assert error.detail == "database unavailable (down)"
    assert edge.wire.closed and cloud.sessions.get("edge-1") is None
    assert cloud.log.matching("refused edge edge-1", "told to retry in 7 s")
    assert not cloud.log.matching("failed")


def test_point6_write_failed_by_a_lost_database_carries_the_hint(cloud: Cloud) -> None:
    """A batch whose connection died mid-write: the edge is told when to send it again, and the
    log line gives a reason (it used to be empty)."""
    edge = cloud.edge()
    edge.admit()
    edge.upload(1, 10)
    cloud.store.writes[0].failed(StoreUnavailable("database unavailable (ConnectionDead)", 2))
    (error,) = [m for m in edge.received() if isinstance(m, Error)]
    assert (error.code, error.retry_after) == (ErrorCode.INTERNAL_ERROR, 2)
    assert cloud.log.matching("storing seq 1..10 failed", "database unavailable (ConnectionDead)")


def test_a_failed_write_closes_the_connection_so_that_the_edge_sends_it_again(
    cloud: Cloud,
) -> None:
    edge = cloud.edge()
    edge.admit()
    edge.upload(1, 10)
    edge.upload(11, 10)
    cloud.store.writes[0].failed(RuntimeError("deadlock detected"))
    assert edge.errors() == [(ErrorCode.INTERNAL_ERROR, "could not store upload, try later")]
    assert edge.wire.closed and len(cloud.store.writes) == 1
    assert cloud.log.matching("edge edge-1", "storing seq 1..10 failed", "deadlock detected")


def test_a_commit_after_the_connection_closed_is_not_acknowledged(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit()
    edge.upload(1, 10)
    edge.connection.connection_lost("Connection lost.")
    cloud.store.writes[0].done(0)
    assert edge.received() == []


# -- timers ---------------------------------------------------------------------------------


def test_no_tls_within_the_hello_timeout_aborts_the_connection(cloud: Cloud) -> None:
    edge = cloud.edge(hello_timeout=30.0)
    edge.connection.connected()
    cloud.clock.advance(29.9)
    assert not edge.wire.aborted
    cloud.clock.advance(0.1)
    assert edge.wire.aborted and not edge.wire.closed  # TLS cannot close what never began
    assert cloud.log.matching(f"closing {PEER} (edge None): no TLS handshake and Hello")


def test_no_hello_within_the_hello_timeout_gets_an_error_and_a_close(cloud: Cloud) -> None:
    edge = cloud.edge(hello_timeout=30.0)
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    cloud.clock.advance(30)
    assert edge.errors() == [(ErrorCode.TIMEOUT, "no TLS handshake and Hello")]
    assert edge.wire.closed and not edge.wire.aborted
    cloud.clock.advance(CLOSE_GRACE - 0.1)
    assert not edge.wire.aborted
    cloud.clock.advance(0.1)  # a peer that never reads is cut
    assert edge.wire.aborted


def test_an_edge_silent_for_three_heartbeats_is_dropped(cloud: Cloud) -> None:
    """Traffic moves the deadline; 3 heartbeat intervals of silence close the session."""
    edge = cloud.edge(heartbeat_interval=60)
    edge.admit()  # heard at t=0
    cloud.clock.advance(170)
    edge.send(Ping(nonce=1))  # heard at t=170: the deadline moves to t=350
    assert edge.received() == [Pong(nonce=1)]
    cloud.clock.advance(20)  # t=190: the first check finds recent traffic and waits
    cloud.clock.advance(159)  # t=349
    assert not edge.connection.closing and edge.received() == []
    cloud.clock.advance(2)  # t=351
    assert edge.errors() == [(ErrorCode.TIMEOUT, SILENT)]
    assert edge.wire.closed and edge.connection.closing
    assert cloud.log.matching(f"closing {PEER} (edge edge-1): silent for 3 heartbeat intervals")


def test_a_lost_connection_stops_its_timers_and_gives_up_its_session(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit()
    assert cloud.clock.getDelayedCalls()
    edge.connection.connection_lost("Connection was closed cleanly.")
    assert cloud.clock.getDelayedCalls() == []
    assert cloud.sessions.get("edge-1") is None
    assert cloud.log.matching(f"edge edge-1 ({PEER}) disconnected: Connection was closed cleanly.")
    written = len(edge.wire.data)
    edge.connection.data_received(b"\xff" * 6)  # not read any more (else: an Error)
    assert len(edge.wire.data) == written


@pytest.mark.parametrize(
    ("tls_failure", "why"),
    [
        ("certificate has expired (certificate 'CN=edge-9', depth 0)", "certificate has expired"),
        (None, "closed before the TLS handshake completed: Connection lost."),
    ],
)
def test_a_failed_tls_handshake_is_one_log_line(
    cloud: Cloud, tls_failure: str | None, why: str
) -> None:
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.connection_lost("Connection lost.", tls_failure)
    assert cloud.log.matching(f"refused TLS client {PEER}: handshake failed: {why}")
    assert cloud.clock.getDelayedCalls() == []


# -- sessions ------------------------------------------------------------------------------


def test_a_new_session_of_the_edge_replaces_the_old_one(cloud: Cloud) -> None:
    old = cloud.edge(peer="198.51.100.1:1111")
    old.admit()
    new = cloud.edge(peer="198.51.100.1:2222")
    new.admit()
    assert old.errors() == [(ErrorCode.SHUTTING_DOWN, "replaced by a newer session of this edge")]
    assert old.wire.closed and not old.connection.live
    assert cloud.sessions.get("edge-1") is new.connection
    assert cloud.log.matching(
        "edge edge-1: session from 198.51.100.1:1111 replaced by a new one from 198.51.100.1:2222"
    )
    old.connection.connection_lost("Connection was closed cleanly.")
    assert cloud.sessions.get("edge-1") is new.connection  # the old one releases nothing
    assert not cloud.log.matching("198.51.100.1:1111) disconnected")


def test_revocation_closes_the_session(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit()
    edge.connection.revoked()
    assert edge.errors() == [(ErrorCode.UNAUTHORIZED, "revoked")]
    assert edge.wire.closed
    assert cloud.log.matching(f"edge edge-1 ({PEER}) revoked while connected")


# -- protocol errors and other messages ---------------------------------------------------


def unchecked_frame(message: Message, last_acked: int = 0) -> bytes:
    """``message`` framed by an edge session of its own (the test's edge would refuse it)."""
    edge, cloud = EdgeSession(), CloudSession()
    cloud.receive_data(edge.send(hello()))
    edge.receive_data(
        cloud.send(
            Welcome(
                version=1,
                server_time=0,
                last_acked_seq=last_acked,
                heartbeat_interval=60,
                max_in_flight=8,
            )
        )
    )
    return edge.send(message)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xff\xff\xff\xff\xff", ErrorCode.FRAME_TOO_LARGE),
        (
            unchecked_frame(ReadingBatch(first_seq=5, records=records(5, 2))),
            ErrorCode.SEQUENCE_ERROR,
        ),
    ],
    ids=["garbage", "sequence"],
)
def test_a_protocol_violation_gets_an_error_and_a_close(
    cloud: Cloud, data: bytes, code: ErrorCode
) -> None:
    edge = cloud.edge()
    edge.admit(last_seq=41)
    edge.connection.data_received(data)
    assert [c for c, _ in edge.errors()] == [code]
    assert edge.wire.closed and cloud.store.writes == []
    assert cloud.log.matching(f"edge edge-1 ({PEER}) broke the protocol ({code.name})")


def test_an_error_from_the_edge_closes_the_connection(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit()
    edge.send(Error(code=ErrorCode.TIMEOUT, detail="silence"))
    assert edge.wire.closed and edge.received() == []
    assert cloud.log.matching(f"edge edge-1 ({PEER}) sent Error", "silence")


def test_a_command_result_is_logged_by_the_default_handler(cloud: Cloud) -> None:
    edge = cloud.edge()
    edge.admit()
    edge.send(CommandResult(command_id=7, status=CommandStatus.UNSUPPORTED, detail="not yet"))
    assert cloud.log.matching("edge edge-1: command 7 status", "not yet")
    assert not edge.wire.closed


def test_other_messages_go_to_the_handler_of_their_type(cloud: Cloud) -> None:
    """The table decides: a handler per type; no handler, no effect; the core stays the core."""
    seen: list[tuple[EdgeConnection, Message]] = []

    def record(connection: EdgeConnection, message: Any) -> None:
        seen.append((connection, message))

    edge = cloud.edge(handlers={FirmwareStatus: record, Ping: record})
    edge.admit()
    status = FirmwareStatus(offer_id=3, state=FirmwareState.DOWNLOADING, received=512)
    edge.send(status, Pong(nonce=9), Ping(nonce=4))
    assert seen == [(edge.connection, status)]
    assert edge.received() == [Pong(nonce=4)]  # Ping is the connection's own
    assert not edge.wire.closed


def test_the_connection_logic_imports_no_twisted() -> None:
    """gridcloud.connection and gridcloud.handlers are sans-IO: no Twisted, no database or TLS
    binding, even indirectly (checked in a fresh interpreter)."""
    code = (
        "import sys, gridcloud.connection, gridcloud.handlers\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'twisted', 'txpostgres', 'psycopg2', 'OpenSSL', 'asyncio'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- point 10: no work for a peer that is not admitted ----------------------------------------


@pytest.fixture
def inflation(monkeypatch: pytest.MonkeyPatch) -> Inflation:
    return count_inflation(monkeypatch)


FLOOD = flood(50)


def test_point10_batches_before_hello_are_refused_without_inflating_them(
    cloud: Cloud, inflation: Inflation
) -> None:
    """A CA-signed peer that never says Hello and floods batches costs no decoding at all."""
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    edge.connection.data_received(FLOOD)
    assert [c for c, _ in edge.errors()] == [ErrorCode.UNEXPECTED_MESSAGE]
    assert edge.wire.closed and cloud.store.admissions == []
    assert inflation == Inflation(0, 0)


def test_point10_batches_pipelined_behind_hello_are_refused_without_inflating_them(
    cloud: Cloud, inflation: Inflation
) -> None:
    """Hello and a flood in one chunk: nothing after Hello is decoded before admission (and the
    connection is refused before the database is asked)."""
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    edge.connection.data_received(EdgeSession().send(hello()) + FLOOD)
    assert [c for c, _ in edge.errors()] == [ErrorCode.UNEXPECTED_MESSAGE]
    assert edge.wire.closed and cloud.store.admissions == []
    assert inflation == Inflation(0, 0)


def test_point10_a_flood_during_admission_and_after_refusal_is_not_decoded(
    cloud: Cloud, inflation: Inflation
) -> None:
    """Reading is paused during admission, but TLS may still hand over what it has decrypted:
    that is refused from the frame header; after the refusal nothing more is even looked at."""
    edge = cloud.edge()
    admission = edge.connect()
    edge.connection.data_received(FLOOD)
    assert [c for c, _ in edge.errors()] == [ErrorCode.UNEXPECTED_MESSAGE]
    admission.failed(EdgeRefused("certificate serial 1 revoked"))
    edge.connection.data_received(FLOOD)
    assert edge.wire.closed and edge.received() == []
    assert inflation == Inflation(0, 0)


def test_point10_a_large_frame_before_hello_is_refused_from_its_header(cloud: Cloud) -> None:
    """Before the handshake a frame may be at most MAX_HANDSHAKE_FRAME long: a peer announcing a
    bigger one is refused at once, not buffered up to max_frame_size."""
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    edge.connection.data_received(uvarint(200_000) + bytes([MessageType.HELLO]) + bytes(1000))
    assert [c for c, _ in edge.errors()] == [ErrorCode.FRAME_TOO_LARGE]
    assert edge.wire.closed


def test_point10_frames_before_hello_are_bounded_in_number(cloud: Cloud) -> None:
    """Unknown optional frames are skipped, but only MAX_HANDSHAKE_FRAMES of them before Hello."""
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    skipped = bytes([2, 0x93, 0])  # an optional message unknown to v1, 1 byte of body
    edge.connection.data_received(skipped * 10_000)
    assert [c for c, _ in edge.errors()] == [ErrorCode.UNEXPECTED_MESSAGE]
    assert edge.wire.closed


def test_point10_uploads_beyond_the_window_are_refused_before_decoding(
    cloud: Cloud, inflation: Inflation
) -> None:
    """In READY the in-flight window is checked from the frame header: the edge was offered 8
    uploads in flight, so a 9th is refused without being inflated."""
    edge = cloud.edge()
    assert edge.admit().max_in_flight == 8
    edge.connection.data_received(FLOOD)
    assert [c for c, _ in edge.errors()] == [ErrorCode.FLOW_CONTROL]
    assert edge.wire.closed and cloud.store.writes == []
    assert inflation.calls == 8


# -- point 11: the certificate's dates, at every connection -----------------------------------


@pytest.mark.parametrize(
    ("moment", "why"),
    [
        (EDGE_CERT.not_valid_after_utc + datetime.timedelta(seconds=1), "certificate expired at"),
        (EDGE_CERT.not_valid_before_utc - datetime.timedelta(seconds=1), "certificate not valid"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_point11_a_certificate_outside_its_dates_is_refused(
    moment: datetime.datetime, why: str
) -> None:
    """A resumed TLS session brings back its certificate unchecked: the connection checks its
    dates on the cloud's clock, whatever OpenSSL did."""
    cloud = Cloud()
    cloud.clock.advance(moment.timestamp() - cloud.clock.seconds())
    edge = cloud.edge()
    edge.connection.connected()
    edge.connection.handshake_completed(EDGE_CERT)
    ((code, detail),) = edge.errors()
    assert code == ErrorCode.UNAUTHORIZED and detail.startswith(why)
    assert edge.wire.closed
    assert cloud.log.matching(f"refused edge edge-1 ({PEER}): {why}")
    edge.connection.data_received(EdgeSession().send(hello()))
    assert cloud.store.admissions == []
