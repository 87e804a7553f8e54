"""The uplink's rules, driven with task.Clock against gridwire's real CloudSession in memory:
resume after the cloud's last ack, the in-flight window, batching with linger, events in the
same sequence space, heartbeats and dead-peer detection, and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Event, Journal
from gridedge.uplink.link import Link, LinkSettings
from gridwire import (
    Ack,
    CloudSession,
    Command,
    CommandResult,
    CommandStatus,
    Error,
    ErrorCode,
    EventReport,
    Hello,
    Limits,
    Message,
    Ping,
    Pong,
    ReadingBatch,
    Welcome,
)
from twisted.internet.task import Clock

from support.journal_helpers import rec


class Cloud:
    """The cloud end of an in-memory link: gridwire's real CloudSession, scripted by the test."""

    def __init__(self, last_acked: int = 0, max_in_flight: int = 8, heartbeat: int = 300,
                 **welcome_limits: int) -> None:
        self.session = CloudSession(limits=Limits(**welcome_limits))
        self.welcome_limits = welcome_limits
        self.last_acked = last_acked
        self.max_in_flight = max_in_flight
        self.heartbeat = heartbeat
        self.got: list[Message] = []
        self.link: Link | None = None
        self.closed = 0

    def from_edge(self, data: bytes) -> None:
        for message in self.session.receive_data(data):
            self.got.append(message)
            if isinstance(message, Hello):
                self.to_edge(Welcome(version=self.session.choose_version() or 1, server_time=0,
                                     last_acked_seq=self.last_acked,
                                     heartbeat_interval=self.heartbeat,
                                     max_in_flight=self.max_in_flight,
                                     **self.welcome_limits))

    def to_edge(self, message: Message) -> None:
        assert self.link is not None
        self.link.data_received(self.session.send(message))

    def uploads(self) -> list[Message]:
        return [m for m in self.got if isinstance(m, (ReadingBatch, EventReport))]

    def seqs(self) -> list[int]:
        out: list[int] = []
        for m in self.uploads():
            if isinstance(m, ReadingBatch):
                out.extend(range(m.first_seq, m.last_seq + 1))
            elif isinstance(m, EventReport):
                out.append(m.seq)
        return out

    def ack_all(self) -> None:
        self.to_edge(Ack(up_to_seq=self.session.unacked_seq))


def settings(**uplink: Any) -> LinkSettings:
    """The link's settings from an [uplink] section with these keys (defaults for the rest)."""
    return LinkSettings.from_config(
        EdgeConfig(firmware_version="1.0", boot_slot="A"),
        UplinkConfig(host="cloud.test", port=7400, server_name="cloud.test",
                     tls_dir=Path("tls"), **uplink),
    )


def connect(journal: Journal, cloud: Cloud, clock: Clock, **uplink: Any) -> Link:
    """A Link wired to ``cloud``, connected (Hello sent, Welcome answered)."""
    opts: dict[str, Any] = {"batch_linger": 0.0, "batch_records": 100, "max_in_flight": 4,
                            "upload_deadline": 0.0}
    opts.update(uplink)

    def close() -> None:
        cloud.closed += 1

    link = Link(journal, settings(**opts), clock, cloud.from_edge, close)
    cloud.link = link
    link.connected()
    return link


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.db", max_bytes=50 << 20)
    j.open()
    return j


def test_resumes_after_last_acked_and_drops_what_cloud_has(journal: Journal) -> None:
    """Welcome(last_acked_seq=250) deletes 1..250 and the first batch starts at 251."""
    journal.append([rec(i) for i in range(300)])
    cloud = Cloud(last_acked=250)
    connect(journal, cloud, Clock())
    assert journal.first_pending_seq == 251
    assert cloud.seqs() == list(range(251, 301))
    hello = cloud.got[0]
    assert isinstance(hello, Hello) and hello.firmware_version == "1.0" and hello.boot_slot == "A"


def test_window_bounds_uploads_in_flight(journal: Journal) -> None:
    """With window 3 only three batches go out; each Ack opens room for more, until done."""
    journal.append([rec(i) for i in range(1000)])
    cloud = Cloud(max_in_flight=3)
    connect(journal, cloud, Clock(), max_in_flight=10)
    assert len(cloud.uploads()) == 3 and cloud.seqs() == list(range(1, 301))
    cloud.to_edge(Ack(up_to_seq=100))
    assert len(cloud.uploads()) == 4
    assert journal.first_pending_seq == 101
    while cloud.session.unacked_seq < 1000:
        cloud.ack_all()
    cloud.ack_all()
    assert cloud.seqs() == list(range(1, 1001))
    assert journal.pending == 0


def test_local_window_is_used_when_smaller(journal: Journal) -> None:
    """The edge's own max_in_flight caps the cloud's offer."""
    journal.append([rec(i) for i in range(1000)])
    cloud = Cloud(max_in_flight=8)
    connect(journal, cloud, Clock(), max_in_flight=2)
    assert len(cloud.uploads()) == 2


def test_partial_batch_waits_for_linger_full_batch_goes_at_once(journal: Journal) -> None:
    """A partial batch waits batch_linger seconds; a full one is sent immediately."""
    clock = Clock()
    cloud = Cloud()
    connect(journal, cloud, clock, batch_linger=2.0, batch_records=50)
    journal.append([rec(i) for i in range(10)])
    assert cloud.uploads() == []
    clock.advance(1.9)
    assert cloud.uploads() == []
    clock.advance(0.2)
    assert cloud.seqs() == list(range(1, 11))
    journal.append([rec(i) for i in range(50)])
    assert cloud.seqs() == list(range(1, 61))


def test_events_are_uploaded_in_sequence_between_batches(journal: Journal) -> None:
    """An Event between readings goes as EventReport with its own journal seq, splitting batches."""
    journal.append([rec(1), rec(2)])
    journal.append_event(Event(42, 1_700_000_000, 1, "tamper"))
    journal.append([rec(3)])
    cloud = Cloud()
    connect(journal, cloud, Clock())
    ups = cloud.uploads()
    assert [type(m).__name__ for m in ups] == ["ReadingBatch", "EventReport", "ReadingBatch"]
    ev = ups[1]
    assert isinstance(ev, EventReport)
    assert (ev.seq, ev.meter_id, ev.kind, ev.detail) == (3, 42, 1, "tamper")
    cloud.ack_all()
    assert journal.pending == 0


def test_reconnect_resends_only_unacknowledged(journal: Journal) -> None:
    """After a cut with 1..200 sent and 1..100 acked, a new connection resends from 101."""
    journal.append([rec(i) for i in range(200)])
    cloud = Cloud()
    link = connect(journal, cloud, Clock())
    cloud.to_edge(Ack(up_to_seq=100))
    link.connection_lost()
    cloud2 = Cloud(last_acked=100)
    connect(journal, cloud2, Clock())
    assert cloud2.seqs() == list(range(101, 201))


def test_cloud_ahead_of_journal_renumbers_pending(journal: Journal) -> None:
    """If the cloud acked seq 5000 but this journal is new, pending entries move past 5000."""
    journal.append([rec(i) for i in range(10)])
    cloud = Cloud(last_acked=5000)
    connect(journal, cloud, Clock())
    assert cloud.seqs() == list(range(5001, 5011))
    journal.append([rec(99)])
    assert journal.read(5011, 1) == [(5011, rec(99))]


def test_heartbeat_ping_and_dead_peer(journal: Journal) -> None:
    """Idle for heartbeat -> Ping; Pong keeps the link; silence for dead_after -> Error + close."""
    clock = Clock()
    cloud = Cloud(heartbeat=300)
    connect(journal, cloud, clock, heartbeat=30.0, dead_after=90.0)
    clock.advance(30)
    pings = [m for m in cloud.got if isinstance(m, Ping)]
    assert len(pings) == 1
    cloud.to_edge(Pong(nonce=pings[0].nonce))
    clock.advance(60)
    assert cloud.closed == 0
    clock.advance(31)
    assert cloud.closed == 1
    assert isinstance(cloud.got[-1], Error) and cloud.got[-1].code == ErrorCode.TIMEOUT


def test_heartbeat_follows_the_cloud_when_shorter(journal: Journal) -> None:
    """Welcome.heartbeat_interval below the local setting wins (the cloud drops after 3x)."""
    clock = Clock()
    cloud = Cloud(heartbeat=10)
    connect(journal, cloud, clock, heartbeat=60.0, dead_after=180.0)
    clock.advance(10)
    assert any(isinstance(m, Ping) for m in cloud.got)


def test_no_welcome_in_time_closes(journal: Journal) -> None:
    """A cloud that accepts TLS but never answers Hello is dropped after welcome_timeout."""
    clock = Clock()
    closed: list[int] = []
    link = Link(journal, settings(connect_timeout=20.0), clock,
                lambda data: None, lambda: closed.append(1))
    link.connected()
    clock.advance(19)
    assert not closed
    clock.advance(2)
    assert closed == [1]


def test_cloud_ping_answered_and_commands_refused_politely(journal: Journal) -> None:
    """A Ping gets a Pong with the same nonce; a Command gets an UNSUPPORTED result."""
    cloud = Cloud()
    connect(journal, cloud, Clock())
    cloud.to_edge(Ping(nonce=77))
    cloud.to_edge(Command(command_id=5, kind=1, meter_id=3))
    pong = [m for m in cloud.got if isinstance(m, Pong)]
    result = [m for m in cloud.got if isinstance(m, CommandResult)]
    assert pong and pong[0].nonce == 77
    assert result and result[0].command_id == 5 and result[0].status == CommandStatus.UNSUPPORTED


def test_garbage_from_cloud_is_a_protocol_error_and_close(journal: Journal) -> None:
    """Malformed bytes end the connection with an Error frame, never an exception; the
    reconnect policy hears of it (it backs off as after a refusal)."""
    sent: list[bytes] = []
    closed: list[int] = []
    ended: list[Error] = []
    link = Link(journal, settings(), Clock(), sent.append, lambda: closed.append(1),
                on_error=ended.append)
    link.connected()
    link.data_received(b"\xff\xff\xff\xff\xff\xff")
    assert closed == [1]
    assert [e.code for e in ended] == [ErrorCode.FRAME_TOO_LARGE]
    probe = CloudSession()
    msgs = probe.receive_data(sent[0])
    assert isinstance(msgs[0], Hello)
    assert len(sent) == 2  # Hello, then Error


def test_cloud_error_closes(journal: Journal) -> None:
    """An Error from the cloud closes the connection."""
    cloud = Cloud()
    connect(journal, cloud, Clock())
    cloud.to_edge(Error(code=ErrorCode.SHUTTING_DOWN, detail="bye"))
    assert cloud.closed == 1


def test_point1_batches_follow_the_limits_in_welcome(journal: Journal) -> None:
    """A cloud whose Welcome says max_batch_records=40 (and a frame size that holds fewer
    records than the edge's own batch) gets batches it accepts, never a batch it must refuse."""
    journal.append([rec(i) for i in range(300)])
    cloud = Cloud(max_batch_records=40)
    connect(journal, cloud, Clock(), batch_records=200)
    while cloud.session.unacked_seq < 300:
        cloud.ack_all()
    sizes = {len(m) for m in cloud.uploads() if isinstance(m, ReadingBatch)}
    assert max(sizes) == 40 and cloud.seqs() == list(range(1, 301))

    smallest = 64 + 65536  # the smallest frame limit a cloud may have
    journal.append([rec(i, energy=2**62 + i * 7919) for i in range(20_000)])
    cloud = Cloud(max_frame_size=smallest)
    link = connect(journal, cloud, Clock(), batch_records=8192)
    while cloud.session.unacked_seq < journal.next_seq - 1:
        cloud.ack_all()
    assert link.closed is False and cloud.closed == 0
    assert cloud.seqs()[-1] == journal.next_seq - 1
