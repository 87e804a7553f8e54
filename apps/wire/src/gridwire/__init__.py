"""gridwire: the sans-IO edge-to-cloud protocol of the gridedge stack.

Bytes in -> messages out, messages in -> bytes out; no sockets, no Twisted, no
clock.  The specification is docs/protocol.md; this module is the whole public
API (everything else is private and may change).

    edge = EdgeSession()
    wire = edge.send(Hello(min_version=1, max_version=1, firmware_version="1.2.3", boot_slot="A"))
    for message in edge.receive_data(received): ...

Tests: tests/wire/ (test_api.py pins this surface).
"""

from ._allowance import Allowance
from ._errors import ErrorCode, ProtocolError, Side
from ._health import HealthSummary
from ._limits import (
    MAX_BOOT_SLOT,
    MAX_CERTIFICATE,
    MAX_CSR,
    MAX_FIRMWARE_VERSION,
    MAX_HANDSHAKE_FRAME,
    MAX_HANDSHAKE_FRAMES,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Limits,
)
from ._messages import (
    COMMAND_ACTIONS,
    Ack,
    AlarmKind,
    CertificateIssued,
    CertificateRequest,
    ChunkRequest,
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    Error,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareState,
    FirmwareStatus,
    Hello,
    Message,
    MessageType,
    Ping,
    Pong,
    ReadingBatch,
    Welcome,
)
from ._ranges import EVENT_TIME_RANGE, VALUE_RANGES, event_problem, record_problems
from ._records import Flags, IntervalRecord, RecordColumns
from ._references import EdgeReferences, ReferenceTable, agreed_references
from ._session import CloudSession, EdgeSession, negotiate_version
from ._state import Role, State

__all__ = [
    "COMMAND_ACTIONS",
    "EVENT_TIME_RANGE",
    "MAX_BOOT_SLOT",
    "MAX_CERTIFICATE",
    "MAX_CSR",
    "MAX_FIRMWARE_VERSION",
    "MAX_HANDSHAKE_FRAME",
    "MAX_HANDSHAKE_FRAMES",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "VALUE_RANGES",
    "Ack",
    "AlarmKind",
    "Allowance",
    "CertificateIssued",
    "CertificateRequest",
    "ChunkRequest",
    "CloudSession",
    "Command",
    "CommandKind",
    "CommandResult",
    "CommandStatus",
    "EdgeReferences",
    "EdgeSession",
    "Error",
    "ErrorCode",
    "EventReport",
    "FirmwareChunk",
    "FirmwareOffer",
    "FirmwareState",
    "FirmwareStatus",
    "Flags",
    "HealthSummary",
    "Hello",
    "IntervalRecord",
    "Limits",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "ProtocolError",
    "ReadingBatch",
    "RecordColumns",
    "ReferenceTable",
    "Role",
    "Side",
    "State",
    "Welcome",
    "agreed_references",
    "event_problem",
    "negotiate_version",
    "record_problems",
]
