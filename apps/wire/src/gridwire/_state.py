"""The session state machines of both roles, as data.

Theory of operation
-------------------
A connection has two ends with fixed roles: the EDGE (TLS client, the grid edge
unit) and the CLOUD (TLS server).  Each end runs one session object that sees
every message in both directions: messages it is asked to send and messages it
decodes from the peer.  Each message is checked against the table of the
session's role below: ``TRANSITIONS[role][state][(direction, message class)]``
gives the next state; a pair that is missing is a protocol violation, raised as
ProtocolError(UNEXPECTED_MESSAGE) naming the message, the role and the state;
its side is LOCAL for a send (our bug) and REMOTE for a receive (the peer's).

1. The edge speaks first: Hello.  The cloud answers Welcome (or Error, e.g.
   UNSUPPORTED_VERSION) and both are READY.  Nothing else may come before.
2. In READY the edge uploads (ReadingBatch, EventReport), answers commands
   (CommandResult), pulls firmware (ChunkRequest, FirmwareStatus) and asks for
   a renewed certificate (CertificateRequest); the cloud acknowledges (Ack),
   commands (Command), serves firmware (FirmwareOffer, FirmwareChunk) and
   answers certificate requests (CertificateIssued).  Either side may Ping; the other answers Pong.
3. Error, from either side and in any state but CLOSED, ends the session:
   the sender closes the connection after writing it, the receiver closes
   when it reads it.  Messages after an Error are discarded.
4. A ProtocolError puts the session in ERROR.  From there only sending Error
   is allowed (then CLOSED): tell the peer ``Error(code=exc.code)``, then
   close the transport.  Receiving in ERROR or CLOSED raises again.

A received frame is checked against the table from its header (its type), before its
body is awaited or decoded, and the frames of a chunk are taken one at a time, each
against the state its predecessors left: a message the state does not allow costs
no decoding.  Before READY, frames are also bounded in size and number
(``_limits.MAX_HANDSHAKE_FRAME``, ``MAX_HANDSHAKE_FRAMES``).

Besides the table, READY has guards on values (enforced by ``_session``):
- upload sequence numbers strictly increase, starting above the
  Welcome's last_acked_seq (SEQUENCE_ERROR);
- Ack.up_to_seq never decreases and never exceeds the highest sequence number
  uploaded in this session, so an edge can never drop unsent journal
  entries because of a wrong ack (SEQUENCE_ERROR);
- at most max_in_flight uploads are unacknowledged (FLOW_CONTROL; checked from
  the frame header, before the upload is decoded);
- ChunkRequest names an offer of this session and a chunk inside it, and
  FirmwareChunk answers an outstanding request with exactly the chunk's
  length (UNEXPECTED_MESSAGE / INVALID_FIELD).

The docs' state tables (docs/protocol.md) are generated from ``TRANSITIONS``
by ``describe()``; tests/wire/test_docs.py checks they are identical.

Tests: tests/wire/test_session.py, tests/wire/test_stateful.py, tests/wire/test_docs.py.
"""

from __future__ import annotations

import enum

from ._messages import (
    Ack,
    CertificateIssued,
    CertificateRequest,
    ChunkRequest,
    Command,
    CommandResult,
    Error,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareStatus,
    Hello,
    Message,
    Ping,
    Pong,
    ReadingBatch,
    Welcome,
)

__all__ = ["TRANSITIONS", "Direction", "Role", "State", "describe", "receivable_types"]


class Role(enum.Enum):
    """Which end of the connection a session is."""

    EDGE = "edge"
    CLOUD = "cloud"


class State(enum.Enum):
    """Session states (both roles use a subset)."""

    START = "START"  #: edge: connected, Hello not sent yet
    AWAIT_WELCOME = "AWAIT_WELCOME"  #: edge: Hello sent
    AWAIT_HELLO = "AWAIT_HELLO"  #: cloud: connected, nothing received yet
    HELLO_RECEIVED = "HELLO_RECEIVED"  #: cloud: Hello received, Welcome not sent yet
    READY = "READY"  #: both: handshake done
    CLOSED = "CLOSED"  #: both: Error sent or received; close the connection
    ERROR = "ERROR"  #: both: a ProtocolError happened; only sending Error is allowed


class Direction(enum.Enum):
    """Whether a message is sent or received by the session."""

    SEND = "send"
    RECEIVE = "receive"


SEND, RECEIVE = Direction.SEND, Direction.RECEIVE
Transitions = dict[State, dict[tuple[Direction, type[Message]], State]]


def _ready(
    sends: tuple[type[Message], ...], receives: tuple[type[Message], ...]
) -> dict[tuple[Direction, type[Message]], State]:
    table = {(SEND, cls): State.READY for cls in sends}
    table.update({(RECEIVE, cls): State.READY for cls in receives})
    table[(SEND, Error)] = State.CLOSED
    table[(RECEIVE, Error)] = State.CLOSED
    return table


_EDGE_SENDS = (ReadingBatch, EventReport, CommandResult, ChunkRequest, FirmwareStatus, Ping, Pong,
               CertificateRequest)
_CLOUD_SENDS = (Ack, Command, FirmwareOffer, FirmwareChunk, Ping, Pong, CertificateIssued)

TRANSITIONS: dict[Role, Transitions] = {
    Role.EDGE: {
        State.START: {
            (SEND, Hello): State.AWAIT_WELCOME,
            (SEND, Error): State.CLOSED,
            (RECEIVE, Error): State.CLOSED,  # e.g. UNAUTHORIZED before Hello was read
        },
        State.AWAIT_WELCOME: {
            (RECEIVE, Welcome): State.READY,
            (SEND, Error): State.CLOSED,
            (RECEIVE, Error): State.CLOSED,
        },
        State.READY: _ready(_EDGE_SENDS, _CLOUD_SENDS),
        State.ERROR: {(SEND, Error): State.CLOSED},
        State.CLOSED: {},
    },
    Role.CLOUD: {
        State.AWAIT_HELLO: {
            (RECEIVE, Hello): State.HELLO_RECEIVED,
            (SEND, Error): State.CLOSED,
            (RECEIVE, Error): State.CLOSED,
        },
        State.HELLO_RECEIVED: {
            (SEND, Welcome): State.READY,
            (SEND, Error): State.CLOSED,
            (RECEIVE, Error): State.CLOSED,
        },
        State.READY: _ready(_CLOUD_SENDS, _EDGE_SENDS),
        State.ERROR: {(SEND, Error): State.CLOSED},
        State.CLOSED: {},
    },
}

INITIAL_STATE = {Role.EDGE: State.START, Role.CLOUD: State.AWAIT_HELLO}


def receivable_types(role: Role, state: State) -> frozenset[int]:
    """The message type codes ``role`` may receive in ``state`` (to vet a frame by its header)."""
    return frozenset(
        int(cls.TYPE) for direction, cls in TRANSITIONS[role][state] if direction is RECEIVE
    )


def describe(role: Role) -> str:
    """The role's transition table as Markdown (pasted into docs/protocol.md)."""
    lines = ["| state | event | next state |", "| --- | --- | --- |"]
    for state, table in TRANSITIONS[role].items():
        if not table:
            lines.append(f"| {state.value} | (none: close the connection) | |")
        for (direction, cls), new_state in table.items():
            event = f"{direction.value} {cls.__name__}"
            lines.append(f"| {state.value} | {event} | {new_state.value} |")
    return "\n".join(lines)
