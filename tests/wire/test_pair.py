"""An edge and a cloud session driven against each other over an in-memory link."""

from __future__ import annotations

import hashlib
import random

from gridwire import (
    Ack,
    ChunkRequest,
    CloudSession,
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    EdgeSession,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareState,
    FirmwareStatus,
    Hello,
    IntervalRecord,
    Message,
    Ping,
    Pong,
    ReadingBatch,
    State,
    Welcome,
)


class Link:
    """Bytes written by one side arrive at the other in randomly sized chunks."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def carry(self, data: bytes, receiver: EdgeSession | CloudSession) -> list[Message]:
        out: list[Message] = []
        pos = 0
        while pos < len(data):
            step = self.rng.choice([1, 2, 7, 100, 5000])
            out += receiver.receive_data(data[pos : pos + step])
            pos += step
        return out


def journal(count: int) -> list[IntervalRecord]:
    """count readings of 10 meters, 15 minutes apart, with cumulative energy."""
    out = []
    for i in range(count):
        meter, interval = 1000 + i % 10, i // 10
        out.append(
            IntervalRecord(
                meter_id=meter,
                interval_end=1_764_000_000 + 900 * interval,
                energy_wh=100_000 * meter + 37 * interval,
                max_demand_w=500 + i % 300,
                voltage_dv=2290 + i % 20,
                current_ma=2000 + i % 900,
                power_factor=900 + i % 90,
                flags=0,
            )
        )
    return out


class Cloud:
    """A cloud that commits readings by (seq) idempotently and acks after the commit."""

    def __init__(self) -> None:
        self.committed: dict[int, IntervalRecord] = {}
        self.events: dict[int, EventReport] = {}

    def last_acked(self) -> int:
        seq = 0
        while seq + 1 in self.committed or seq + 1 in self.events:
            seq += 1
        return seq


def run_connection(
    rng: random.Random, cloud_app: Cloud, records: list[IntervalRecord], drop_after: int | None
) -> int:
    """One connection: handshake, upload until done or until drop_after frames; returns uploads."""
    link = Link(rng)
    edge, cloud = EdgeSession(), CloudSession()
    (hello,) = link.carry(
        edge.send(Hello(min_version=1, max_version=1, firmware_version="1.0.0", boot_slot="A")),
        cloud,
    )
    assert isinstance(hello, Hello) and cloud.choose_version() == 1
    welcome = Welcome(
        version=1,
        server_time=1_764_100_000,
        last_acked_seq=cloud_app.last_acked(),
        heartbeat_interval=60,
        max_in_flight=3,
    )
    assert link.carry(cloud.send(welcome), edge) == [welcome]
    sent = 0
    while edge.next_seq <= len(records):
        while edge.can_upload and edge.next_seq <= len(records):
            first = edge.next_seq
            chunk = records[first - 1 : first - 1 + rng.randint(1, 40)]
            for message in link.carry(
                edge.send(ReadingBatch(first_seq=first, records=chunk)), cloud
            ):
                assert isinstance(message, ReadingBatch)
                for offset, record in enumerate(message.records):
                    cloud_app.committed[message.first_seq + offset] = record
            sent += 1
            if drop_after is not None and sent >= drop_after:
                return sent  # connection lost: nothing acknowledged after this point
        (ack,) = link.carry(cloud.send(Ack(up_to_seq=cloud.unacked_seq)), edge)
        assert ack == Ack(up_to_seq=edge.last_acked_seq)
    return sent


def test_upload_with_drops_and_resume_stores_everything_once() -> None:
    """Across dropped connections, resuming at Welcome.last_acked_seq stores every reading once."""
    rng = random.Random(4)
    records = journal(1000)
    cloud_app = Cloud()
    for drop_after in (3, 1, 5, None):
        run_connection(rng, cloud_app, records, drop_after)
    assert [cloud_app.committed[seq] for seq in range(1, 1001)] == records
    assert cloud_app.last_acked() == 1000


def test_commands_events_heartbeats_and_firmware_over_the_link() -> None:
    """A command round trip, an alarm, ping/pong and a full firmware pull with matching hash."""
    rng = random.Random(9)
    link = Link(rng)
    edge, cloud = EdgeSession(), CloudSession()
    link.carry(
        edge.send(Hello(min_version=1, max_version=1, firmware_version="1.0.0", boot_slot="B")),
        cloud,
    )
    link.carry(cloud.send(Welcome(version=1, server_time=5, last_acked_seq=0)), edge)

    (command,) = link.carry(
        cloud.send(Command(command_id=77, kind=CommandKind.RELAY_OPEN, meter_id=1003)), edge
    )
    assert isinstance(command, Command) and command.kind is CommandKind.RELAY_OPEN
    (result,) = link.carry(edge.send(CommandResult(command_id=77, status=CommandStatus.OK)), cloud)
    assert result == CommandResult(command_id=77, status=CommandStatus.OK)

    alarm = EventReport(seq=1, meter_id=1003, time=6, kind=4, detail="relay opened by command 77")
    assert link.carry(edge.send(alarm), cloud) == [alarm]
    link.carry(cloud.send(Ack(up_to_seq=1)), edge)
    assert edge.last_acked_seq == 1

    assert link.carry(edge.send(Ping(nonce=42)), cloud) == [Ping(nonce=42)]
    assert link.carry(cloud.send(Pong(nonce=42)), edge) == [Pong(nonce=42)]

    bundle = rng.randbytes(150_000)
    offer = FirmwareOffer(
        offer_id=3,
        version="1.1.0",
        size=len(bundle),
        sha256=hashlib.sha256(bundle).digest(),
        chunk_size=65536,
    )
    assert link.carry(cloud.send(offer), edge) == [offer]
    received = bytearray()
    for index in range(offer.chunk_count):
        (request,) = link.carry(edge.send(ChunkRequest(offer_id=3, index=index)), cloud)
        assert isinstance(request, ChunkRequest)
        start = request.index * offer.chunk_size
        chunk = FirmwareChunk(
            offer_id=3, index=request.index, data=bundle[start : start + offer.chunk_size]
        )
        (got,) = link.carry(cloud.send(chunk), edge)
        assert isinstance(got, FirmwareChunk)
        received += got.data
    assert hashlib.sha256(received).digest() == offer.sha256
    status = FirmwareStatus(offer_id=3, state=FirmwareState.DOWNLOADED, received=len(received))
    assert link.carry(edge.send(status), cloud) == [status]
    assert edge.state is cloud.state is State.READY
