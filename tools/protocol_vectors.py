"""gridwire conformance vectors: docs/protocol-vectors.json, made from the code and played back.

Why: another team implementing either end (a unit in C, a cloud in Go) needs
more than prose: exact bytes and what they mean, in both directions, including
the bytes a correct implementation must refuse and with which error.  The
vectors are *conversations*: each step is a frame one role sends, as hex, with
the message it means (JSON), or, for a malformed frame, the error code the
receiver must raise.  An implementation of role R plays a conversation by
sending R's steps (its encoder must produce exactly the hex) and receiving the
other role's (its decoder must yield exactly the message, or raise the error).
State matters (a batch is only valid after Hello/Welcome, and METER_DELTA
refers to the previous batch), which is why the vectors are conversations, not
loose frames.

JSON form of a message: ``{"type": "Hello", "fields": {...}}`` with every
field; integers (enums as their numbers), text as strings, bytes as
``{"hex": "..."}``; a ReadingBatch as ``first_seq`` and ``records`` (lists of
the eight record fields in wire column order).

``python tools/protocol_vectors.py`` rewrites docs/protocol-vectors.json from
the code; tests/wire/test_wire_protocol_vectors.py fails when the file drifts,
and tests/edge/test_edge_protocol_vectors.py and
tests/cloud/test_cloud_protocol_vectors.py
play every conversation as the edge and as the cloud through gridwire's
sessions (the sessions both ends' applications use).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gridwire
from gridwire import (
    Ack,
    CertificateIssued,
    CertificateRequest,
    CloudSession,
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    EdgeReferences,
    EdgeSession,
    EventReport,
    Hello,
    IntervalRecord,
    Message,
    Ping,
    Pong,
    ProtocolError,
    ReadingBatch,
    ReferenceTable,
    Welcome,
)
from gridwire._codec import encode_message  # raw frames for the malformed cases

PATH = Path(__file__).resolve().parents[1] / "docs" / "protocol-vectors.json"
FORMAT = "gridwire conformance vectors"

Step = dict[str, Any]


# -- messages <-> JSON -------------------------------------------------------------------------


def to_json(message: Message) -> dict[str, Any]:
    if isinstance(message, ReadingBatch):
        return {"type": "ReadingBatch", "fields": {
            "first_seq": message.first_seq,
            "records": [list(row) for row in message.columns.rows()]}}
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            value = {"hex": value.hex()}
        elif isinstance(value, enum.IntEnum):
            value = int(value)
        fields[f.name] = value
    return {"type": type(message).__name__, "fields": fields}


def from_json(obj: dict[str, Any]) -> Message:
    cls = getattr(gridwire, obj["type"])
    fields = dict(obj["fields"])
    if cls is ReadingBatch:
        return ReadingBatch(first_seq=fields["first_seq"],
                            records=[IntervalRecord(*row) for row in fields["records"]])
    for key, value in fields.items():
        if isinstance(value, dict) and set(value) == {"hex"}:
            fields[key] = bytes.fromhex(value["hex"])
    message: Message = cls(**fields)
    return message


# -- the conversations -------------------------------------------------------------------------

T0 = 1_772_409_600
HELLO = Hello(min_version=1, max_version=1, firmware_version="1.4.2", boot_slot="A",
              last_command_id=0, edge_time=T0)
WELCOME = Welcome(version=1, server_time=T0 + 2, last_acked_seq=0, heartbeat_interval=1200,
                  max_in_flight=8)
HELLO_V2 = Hello(min_version=1, max_version=2, firmware_version="1.5.0", boot_slot="B",
                 last_command_id=0, edge_time=T0)
WELCOME_V2 = Welcome(version=2, server_time=T0 + 2, last_acked_seq=0, heartbeat_interval=1200,
                     max_in_flight=8)


def _record(meter: int, end: int, energy: int, flags: int = 0) -> IntervalRecord:
    return IntervalRecord(meter, end, energy, 1460, 2291, 6480, 930, flags)


class _Recorder:
    """A real edge and cloud session; each message goes through both and becomes a step."""

    def __init__(self, cloud_versions: tuple[int, ...] = (1, 2, 3),
                 tables: dict[str, Any] | None = None) -> None:
        self.edge, self.cloud = _sessions(cloud_versions, tables or {})
        self.steps: list[Step] = []

    def say(self, sender: str, message: Message) -> bytes:
        me, peer = (self.edge, self.cloud) if sender == "edge" else (self.cloud, self.edge)
        data = me.send(message)
        (got,) = peer.receive_data(data)
        assert got == message, (got, message)
        self.steps.append({"from": sender, "hex": data.hex(), "message": to_json(message)})
        return data

    def bad(self, sender: str, data: bytes, why: str) -> None:
        """A malformed frame from ``sender``: record the error the receiver raises."""
        peer = self.cloud if sender == "edge" else self.edge
        try:
            peer.receive_data(data)
        except ProtocolError as exc:
            self.steps.append({"from": sender, "hex": data.hex(), "why": why,
                               "error": exc.code.name, "error_code": int(exc.code)})
            return
        raise AssertionError(f"{why}: no error")


def _table(spec: dict[str, Any]) -> ReferenceTable:
    return ReferenceTable([tuple(row) for row in spec["rows"]])


def _sessions(cloud_versions: tuple[int, ...],
              tables: dict[str, Any]) -> tuple[EdgeSession, CloudSession]:
    """The two sessions of a conversation, with the reference tables it starts from."""
    references = None
    if "edge_table" in tables:
        references = EdgeReferences()
        references.committed = _table(tables["edge_table"])
        references.seq = tables["edge_table"]["seq"]
    cloud = CloudSession(versions=cloud_versions)
    if "cloud_table" in tables:
        cloud.stored_references = (tables["cloud_table"]["seq"], _table(tables["cloud_table"]))
    return EdgeSession(references=references), cloud


def _opened() -> _Recorder:
    r = _Recorder()
    r.say("edge", HELLO)
    r.say("cloud", WELCOME)
    return r


def conversations() -> Iterator[dict[str, Any]]:
    r = _opened()
    end = T0 + 900
    first = [_record(412_003, end, 1_204_811), _record(1_735_114, end, 88_020),
             _record(412_001, end, 3_990_402, flags=0x01)]
    r.say("edge", ReadingBatch(first_seq=1, records=first))
    r.say("cloud", Ack(up_to_seq=3))
    second = [_record(412_003, end + 900, 1_205_102), _record(412_001, end + 900, 3_990_402,
                                                              flags=0x01),
              _record(5_201_077, end + 900, 12)]
    r.say("edge", ReadingBatch(first_seq=4, records=second))  # METER_DELTA on batch one
    r.say("edge", EventReport(seq=7, meter_id=412_003, time=end + 950, kind=1, detail="cover"))
    r.say("cloud", Ack(up_to_seq=7))
    r.say("edge", Ping(nonce=7))
    r.say("cloud", Pong(nonce=7))
    r.say("cloud", Command(command_id=42, kind=CommandKind.RELAY_OPEN, meter_id=412_001))
    r.say("edge", CommandResult(command_id=42, status=CommandStatus.OK, detail=""))
    yield {"name": "v1 session: handshake, two batches (the second refers to the first), an "
                   "event, heartbeat, a command", "version": 1, "steps": r.steps}

    r = _Recorder()
    r.say("edge", HELLO_V2)
    r.say("cloud", WELCOME_V2)
    meters = [412_003 + 7 * i + (i * i) % 13 for i in range(40)]
    seq = 1
    for k in (1, 2, 3):
        rows = [_record(m, T0 + 900 * k, 1_000_000 + m % 977 * 100 + 37 * k) for m in meters]
        r.say("edge", ReadingBatch(first_seq=seq, records=rows))  # codec 2 from the second
        seq += len(rows)
        r.say("cloud", Ack(up_to_seq=seq - 1))
    yield {"name": "v2 session: three batches, each deflated against the previous (codec 2)",
           "version": 2, "steps": r.steps}

    r = _Recorder(cloud_versions=(1,))
    r.say("edge", HELLO_V2)
    r.say("cloud", WELCOME)
    r.say("edge", ReadingBatch(first_seq=1, records=first))
    r.say("edge", ReadingBatch(first_seq=4, records=second))
    yield {"name": "v2 edge, v1 cloud: version 1 is chosen and batches are v1's",
           "version": 1, "cloud_versions": [1], "steps": r.steps}

    yield from _version3(first, second)

    r = _opened()
    good = r.edge.send(ReadingBatch(first_seq=1, records=first))
    # frame = length prefix (1 byte here), type, first_seq (1), count (1), codec
    bad = bytearray(good)
    bad[4] = 0x07
    r.bad("edge", bytes(bad), "a ReadingBatch with an unknown batch codec (7)")
    yield {"name": "malformed batch codec", "version": 1, "steps": r.steps}

    r = _Recorder()
    r.bad("edge", encode_message(Ack(up_to_seq=5)),
          "an Ack (a cloud -> edge message) sent by an edge, before its Hello")
    yield {"name": "wrong direction before Hello", "version": 1, "steps": r.steps}

    r = _Recorder()
    r.say("edge", HELLO)
    r.bad("cloud", encode_message(Ack(up_to_seq=1)),
          "an Ack before Welcome (the edge's session is waiting for Welcome)")
    yield {"name": "Ack before Welcome", "version": 1, "steps": r.steps}

    r = _Recorder()
    r.bad("edge", bytes.fromhex("ffffff7f"), "a length prefix above max_frame_size")
    yield {"name": "frame too large", "version": 1, "steps": r.steps}

    r = _opened()
    r.say("edge", ReadingBatch(first_seq=1, records=first))
    r.bad("cloud", encode_message(Ack(up_to_seq=9)),
          "an Ack for a sequence number the edge never sent")
    yield {"name": "Ack beyond what was sent", "version": 1, "steps": r.steps}

    # Certificate renewal (optional messages 0x80/0x81). The bytes stand for DER (a CSR, a
    # certificate, the issuing CA's): the wire carries them as opaque blobs.
    r = _Recorder()
    r.say("edge", HELLO_V2)
    r.say("cloud", WELCOME_V2)
    csr = bytes.fromhex("3081c93070020100") + bytes(range(32))
    r.say("edge", CertificateRequest(csr=csr))
    r.say("cloud", CertificateIssued(certificate=bytes.fromhex("308201aa30820150") + bytes(24),
                                     issuer=bytes.fromhex("308201a030820146") + bytes(16)))
    r.say("edge", CertificateRequest(csr=csr))
    r.say("cloud", CertificateIssued(detail="renewal not enabled on this cloud"))
    yield {"name": "certificate renewal: a request answered, a request refused",
           "version": 2, "steps": r.steps}

    r = _Recorder()
    r.bad("edge", encode_message(CertificateRequest(csr=b"\x30\x00")),
          "a CertificateRequest before Hello (only in READY)")
    yield {"name": "CertificateRequest before Hello", "version": 1, "steps": r.steps}


def _version3(first: list[IntervalRecord],
              second: list[IntervalRecord]) -> Iterator[dict[str, Any]]:
    """Version 3: reference tables for the whole connection and across reconnects."""
    hello = dataclasses.replace(HELLO_V2, max_version=3)
    r = _Recorder()
    r.say("edge", hello)
    r.say("cloud", dataclasses.replace(WELCOME_V2, version=3))
    r.say("edge", ReadingBatch(first_seq=1, records=first))
    r.say("cloud", Ack(up_to_seq=3))
    r.say("edge", ReadingBatch(first_seq=4, records=second[2:]))  # a new meter only
    r.say("edge", ReadingBatch(first_seq=5, records=second[:2]))  # refers to batch one
    r.say("cloud", Ack(up_to_seq=6))
    yield {"name": "v3 session without a table yet: a batch refers to a meter last seen two "
                   "batches earlier (the connection's table)", "version": 3, "steps": r.steps}

    rows = [list(record) for record in first]
    tables = {"edge_table": {"seq": 3, "rows": rows}, "cloud_table": {"seq": 3, "rows": rows}}
    r = _Recorder(tables=tables)
    r.say("edge", dataclasses.replace(hello, references=3, budget_bytes=50_000_000,
                                      month_bytes=1_234_567))
    r.say("cloud", dataclasses.replace(WELCOME_V2, version=3, last_acked_seq=3, references=3))
    r.say("edge", ReadingBatch(first_seq=4, records=second))
    r.say("cloud", Ack(up_to_seq=6))
    yield {"name": "v3 reconnect: the edge offers its table as of seq 3 (and reports its "
                   "data budget), the cloud's stored one matches, the first batch refers to it",
           "version": 3, **tables, "steps": r.steps}

    tables = {"edge_table": {"seq": 3, "rows": rows}}
    r = _Recorder(tables=tables)
    r.say("edge", dataclasses.replace(hello, references=3))
    r.say("cloud", dataclasses.replace(WELCOME_V2, version=3, last_acked_seq=3))
    r.say("edge", ReadingBatch(first_seq=4, records=second))
    yield {"name": "v3 reconnect to a cloud without the table: both start empty", "version": 3,
           **tables, "steps": r.steps}

    r = _Recorder(cloud_versions=(1, 2), tables=tables)
    r.say("edge", dataclasses.replace(hello, references=3))
    r.say("cloud", dataclasses.replace(WELCOME_V2, last_acked_seq=3))
    r.say("edge", ReadingBatch(first_seq=4, records=second))
    yield {"name": "v3 edge, v2 cloud: version 2 is chosen, Hello.references is ignored",
           "version": 2, "cloud_versions": [1, 2], **tables, "steps": r.steps}

    r = _Recorder()
    r.say("edge", hello)
    r.bad("cloud", encode_message(dataclasses.replace(WELCOME_V2, version=3, last_acked_seq=3,
                                                      references=3)),
          "a Welcome agreeing on a reference table the edge never offered")
    yield {"name": "Welcome.references without an offer", "version": 3, "steps": r.steps}


def build() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "protocol_versions": [1, 2, 3],
        "spec": "docs/protocol.md",
        "how_to_play": (
            "For role R (edge or cloud), start a fresh session per conversation and go "
            "through its steps in order: a step 'from' R must be produced by R's encoder as "
            "exactly 'hex' from 'message'; a step from the other role is fed to R's decoder, "
            "which must yield exactly 'message', or, when the step has 'error', fail with "
            "that protocol error code (the conversation ends there). Steps with 'error' are "
            "never produced by a correct sender, so R skips its own. 'cloud_versions', where "
            "present, are the only versions the cloud of that conversation speaks. "
            "'edge_table' and 'cloud_table' (version 3), where present, are the reference "
            "tables the edge keeps and the cloud has stored before the conversation: the "
            "seq each is as of and its rows (one per meter, in index order, fields as in "
            "ReadingBatch records); without them a side starts with none."),
        "conversations": list(conversations()),
    }


def text() -> str:
    """The file's text: indented, but a list of numbers (a record) on one line."""
    out = json.dumps(build(), indent=1)
    out = re.sub(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]",
                 lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", out)
    return out + "\n"


# -- playing a conversation --------------------------------------------------------------------


def play(conversation: dict[str, Any], role: str) -> None:
    """Play ``conversation`` as ``role`` with gridwire's session; AssertionError on a mismatch."""
    versions = tuple(conversation.get("cloud_versions", (1, 2, 3)))
    edge, cloud = _sessions(versions, conversation)
    session: EdgeSession | CloudSession = edge if role == "edge" else cloud
    for index, step in enumerate(conversation["steps"]):
        where = f"{conversation['name']!r} step {index}"
        if step["from"] == role:
            if "error" in step:
                continue
            data = session.send(from_json(step["message"]))
            assert data.hex() == step["hex"], f"{where}: sent {data.hex()}"
            continue
        data = bytes.fromhex(step["hex"])
        if "error" in step:
            try:
                session.receive_data(data)
            except ProtocolError as exc:
                assert exc.code.name == step["error"], f"{where}: raised {exc.code.name}"
                return
            raise AssertionError(f"{where}: no error, expected {step['error']}")
        got = session.receive_data(data)
        assert [to_json(m) for m in got] == [step["message"]], f"{where}: decoded {got}"


if __name__ == "__main__":
    PATH.write_text(text())
    print(f"wrote {PATH}", file=sys.stderr)
