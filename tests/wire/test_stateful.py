"""Hypothesis drives an edge/cloud pair through random legal traffic; both ends stay in step."""

from __future__ import annotations

from gridwire import (
    Ack,
    CloudSession,
    Command,
    CommandResult,
    EdgeSession,
    EventReport,
    Hello,
    IntervalRecord,
    Message,
    Ping,
    Pong,
    ReadingBatch,
    State,
    Welcome,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from support.wire_strategies import realistic_records


class Pair(RuleBasedStateMachine):
    """An edge and a cloud session joined by a link that splits bytes at random points."""

    def __init__(self) -> None:
        super().__init__()
        self.edge, self.cloud = EdgeSession(), CloudSession()
        self.stored: dict[int, object] = {}
        hello = Hello(min_version=1, max_version=1, firmware_version="1", boot_slot="A")
        assert self.cloud.receive_data(self.edge.send(hello)) == [hello]
        welcome = Welcome(version=1, server_time=1, last_acked_seq=40, max_in_flight=3)
        assert self.edge.receive_data(self.cloud.send(welcome)) == [welcome]

    def carry(
        self, data: bytes, receiver: EdgeSession | CloudSession, cuts: list[int]
    ) -> list[Message]:
        out: list[Message] = []
        start = 0
        for cut in sorted(c % (len(data) + 1) for c in cuts):
            out += receiver.receive_data(data[start:cut])
            start = max(start, cut)
        return out + receiver.receive_data(data[start:])

    @precondition(lambda self: self.edge.can_upload)
    @rule(
        records=realistic_records(max_meters=4),
        gap=st.integers(0, 3),
        cuts=st.lists(st.integers(0, 500), max_size=3),
    )
    def upload_batch(self, records: list[IntervalRecord], gap: int, cuts: list[int]) -> None:
        batch = ReadingBatch(first_seq=self.edge.next_seq + gap, records=records)
        (got,) = self.carry(self.edge.send(batch), self.cloud, cuts)
        assert got == batch
        for offset, record in enumerate(got.records):
            self.stored[got.first_seq + offset] = record

    @precondition(lambda self: self.edge.can_upload)
    @rule(kind=st.integers(0, 20), cuts=st.lists(st.integers(0, 30), max_size=2))
    def upload_event(self, kind: int, cuts: list[int]) -> None:
        event = EventReport(seq=self.edge.next_seq, meter_id=7, time=5, kind=kind, detail="x")
        assert self.carry(self.edge.send(event), self.cloud, cuts) == [event]
        self.stored[event.seq] = event

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        up_to = data.draw(st.integers(self.cloud.last_acked_seq, self.cloud.unacked_seq))
        assert self.edge.receive_data(self.cloud.send(Ack(up_to_seq=up_to))) == [
            Ack(up_to_seq=up_to)
        ]
        assert self.edge.last_acked_seq == up_to

    @rule(nonce=st.integers(0, 2**32 - 1), from_edge=st.booleans())
    def heartbeat(self, nonce: int, from_edge: bool) -> None:
        a, b = (self.edge, self.cloud) if from_edge else (self.cloud, self.edge)
        assert b.receive_data(a.send(Ping(nonce=nonce))) == [Ping(nonce=nonce)]
        assert a.receive_data(b.send(Pong(nonce=nonce))) == [Pong(nonce=nonce)]

    @rule(command_id=st.integers(0, 2**64 - 1), kind=st.integers(0, 2**16 - 1))
    def command(self, command_id: int, kind: int) -> None:
        command = Command(command_id=command_id, kind=kind, meter_id=3, payload=b"\x01")
        assert self.edge.receive_data(self.cloud.send(command)) == [command]
        result = CommandResult(command_id=command_id, status=3)
        assert self.cloud.receive_data(self.edge.send(result)) == [result]

    @invariant()
    def in_step(self) -> None:
        assert self.edge.state is self.cloud.state is State.READY
        assert self.edge.last_acked_seq == self.cloud.last_acked_seq
        assert self.edge.highest_seq == self.cloud.highest_seq
        assert self.edge.in_flight == self.cloud.in_flight <= self.edge.window
        assert all(seq > 40 for seq in self.stored)


TestPair = Pair.TestCase
TestPair.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
