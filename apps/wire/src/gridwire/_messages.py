"""The messages of gridwire v1: frozen, slotted, keyword-built, validated on construction.

Each class states its wire type code (``TYPE``) and its fields in wire order
(``WIRE``) as data; the codec (``_codec``) and the docs generator read the same
data, so the documented layout cannot differ from the encoded one.

Field kinds in ``WIRE``:
    ("uint", bits)   unsigned varint, value < 2**bits
    ("text", n)      uvarint length + UTF-8, at most n bytes
    ("blob", n)      uvarint length + bytes, at most n bytes
    ("fixed", n)     exactly n raw bytes, no length prefix

Extension fields (``EXTENSIONS``): ``(tag, name, kind)`` with the same kinds,
sent in the extension area after the fields, only when their value is not the
default (0, empty, or None where the field's default is None: "not said"); an
even tag is optional, so a peer that does not know the field skips it.

Why validate on construction: an invalid message then cannot exist, so a
sender cannot put it on the wire and a decoder that builds one has checked it.
Constructors raise ProtocolError(INVALID_FIELD, side=LOCAL); the decoder
reports the same failure as side=REMOTE.

Tests: tests/wire/test_messages.py (validation), tests/wire/test_roundtrip.py.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from ._errors import ErrorCode, local_error
from ._limits import (
    MAX_BOOT_SLOT,
    MAX_CERTIFICATE,
    MAX_CHUNK,
    MAX_CSR,
    MAX_FIRMWARE_VERSION,
    MAX_PAYLOAD,
    MAX_TEXT,
)
from ._records import IntervalRecord, RecordColumns

__all__ = [
    "COMMAND_ACTIONS",
    "Ack",
    "AlarmKind",
    "CertificateIssued",
    "CertificateRequest",
    "ChunkRequest",
    "Command",
    "CommandKind",
    "CommandResult",
    "CommandStatus",
    "Error",
    "EventReport",
    "FirmwareChunk",
    "FirmwareOffer",
    "FirmwareState",
    "FirmwareStatus",
    "Hello",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "ReadingBatch",
    "Welcome",
]

U16, U32, U64 = ("uint", 16), ("uint", 32), ("uint", 64)
TEXT = ("text", MAX_TEXT)


class MessageType(enum.IntEnum):
    """Wire type codes.  Codes >= 0x80 are optional: a peer that does not know one skips it."""

    HELLO = 0x01
    WELCOME = 0x02
    READING_BATCH = 0x03
    ACK = 0x04
    EVENT_REPORT = 0x05
    COMMAND = 0x06
    COMMAND_RESULT = 0x07
    PING = 0x08
    PONG = 0x09
    FIRMWARE_OFFER = 0x0A
    CHUNK_REQUEST = 0x0B
    FIRMWARE_CHUNK = 0x0C
    FIRMWARE_STATUS = 0x0D
    ERROR = 0x0E
    # Optional messages (bit 7): a v1/v2 peer that does not know them skips them.
    CERTIFICATE_REQUEST = 0x80
    CERTIFICATE_ISSUED = 0x81


class AlarmKind(enum.IntEnum):
    """EventReport.kind codes defined by v1 (other values are carried unchanged)."""

    TAMPER = 1
    OUTAGE = 2
    POWER_RESTORED = 3
    RELAY_OPENED = 4
    RELAY_CLOSED = 5
    VOLTAGE_SAG = 6
    VOLTAGE_SWELL = 7
    OVERLOAD = 8
    METER_UNREACHABLE = 9
    METER_BACK = 10
    CLOCK_ADJUSTED = 11
    LOW_CREDIT = 12
    # Events of the edge unit itself (meter_id 0), from 0x8000 up.
    JOURNAL_EVICTED = 0x8001  #: the journal was full; detail says how many readings were dropped
    JOURNAL_DISK_FULL = 0x8002  #: the data partition was full; readings may have been refused
    RECORDS_REFUSED = 0x8003  #: values outside the value ranges were refused; detail says which
    JOURNAL_QUARANTINED = 0x8004  #: the journal was unreadable, moved aside, restarted empty
    DATA_BUDGET = 0x8005  #: the month's data use crossed 80% or 100% of the unit's budget
    HEALTH_SUMMARY = 0x8006  #: periodic; detail: gridwire.HealthSummary.to_detail()
    #: the unit opened meter_id's relay on its own: its prepaid allowance ran out (or expired)
    CREDIT_RELAY_OPENED = 0x8007
    #: the unit closed the relay it had opened for credit: a newer allowance gave credit again
    CREDIT_RELAY_CLOSED = 0x8008
    LINK_QUALITY = 0x8009  #: a meter's radio link: detail "<rssi dBm> <hops> <parent id>"
    # A command's final outcome (meter_id: the command's meter, 0 for the unit), journalled
    # like any event so that it rides the exactly-once path; detail "<id> <action> <reason>".
    COMMAND_SUCCEEDED = 0x8010
    COMMAND_FAILED = 0x8011
    COMMAND_EXPIRED = 0x8012  #: its expiry passed before the unit could execute it


class CommandKind(enum.IntEnum):
    """Command.kind codes defined by v1; an edge answers unknown kinds with UNSUPPORTED."""

    RELAY_OPEN = 1  #: open the load relay of meter_id (disconnect)
    RELAY_CLOSE = 2  #: close the load relay of meter_id (reconnect)
    SET_TARIFF = 3  #: payload: tariff table for meter_id (application defined)
    FIRMWARE_UPDATE = 4  #: payload: offer_id (uvarint); fetch it with ChunkRequest
    REBOOT = 5  #: restart the edge unit (meter_id 0)
    READ_NOW = 6  #: read meter_id now instead of at the next interval
    SET_CONFIG = 7  #: payload: configuration document (application defined)
    UPLOAD_NOW = 8  #: upload what the journal holds now, without waiting (meter_id 0)
    SET_ALLOWANCE = 9  #: payload: meter_id's prepaid allowance (:class:`gridwire.Allowance`)


#: The action names of the command kinds a unit executes, as command outcomes name them
#: (EventReport.detail "<command_id> <action> <reason>") and as the cloud's API does.
COMMAND_ACTIONS: dict[int, str] = {
    CommandKind.RELAY_OPEN: "relay_open",
    CommandKind.RELAY_CLOSE: "relay_close",
    CommandKind.READ_NOW: "read_now",
    CommandKind.SET_CONFIG: "set_config",
    CommandKind.REBOOT: "reboot",
    CommandKind.UPLOAD_NOW: "upload_now",
    CommandKind.SET_ALLOWANCE: "set_allowance",
}


class CommandStatus(enum.IntEnum):
    """CommandResult.status codes."""

    OK = 0  #: done
    FAILED = 1  #: tried and failed (detail says why)
    REJECTED = 2  #: refused (invalid for this meter, not permitted)
    UNSUPPORTED = 3  #: unknown command kind
    ACCEPTED = 4  #: started; a final result follows later with the same command_id


class FirmwareState(enum.IntEnum):
    """FirmwareStatus.state codes."""

    DOWNLOADING = 1
    DOWNLOADED = 2  #: all chunks received and the sha256 matches
    INSTALLING = 3
    INSTALLED = 4  #: written to the inactive slot; active after reboot
    FAILED = 5
    REJECTED = 6  #: refused (wrong platform, not newer, bad signature)
    VERIFYING = 7  #: checking a downloaded bundle (signature, compatible, rebuilt delta's hash)
    REBOOTING = 8  #: installed; rebooting into the new slot now or in the maintenance window
    HEALTHY = 9  #: running the offered version, and its slot marked good after health
    ROLLED_BACK = 10  #: the new slot never became healthy; back on the old one (detail: why)


def _enum_or_int(kind: type[enum.IntEnum], value: int) -> int:
    """Known codes become enum members (readable reprs); unknown ones stay plain ints."""
    try:
        return kind(value)
    except ValueError:
        return value


class Message:
    """Base of every message: validation driven by the class's WIRE field list."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]
    WIRE: ClassVar[tuple[tuple[str, tuple[str, int]], ...]]
    #: Extension fields this version knows: (tag, name, (kind, bound)), see the module docstring.
    EXTENSIONS: ClassVar[tuple[tuple[int, str, tuple[str, int]], ...]] = ()
    ENUMS: ClassVar[dict[str, type[enum.IntEnum]]] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        fields = self.WIRE + tuple(
            (attr, kind) for _tag, attr, kind in self.EXTENSIONS if getattr(self, attr) is not None
        )
        for attr, (kind, bound) in fields:
            value = getattr(self, attr)
            if kind == "uint":
                if type(value) is not int and not isinstance(value, enum.IntEnum):
                    raise local_error(ErrorCode.INVALID_FIELD, f"{name}.{attr} must be an int")
                if not 0 <= value < (1 << bound):
                    raise local_error(
                        ErrorCode.INVALID_FIELD, f"{name}.{attr}={value} not in 0..2**{bound}-1"
                    )
            elif kind == "text":
                if type(value) is not str:
                    raise local_error(ErrorCode.INVALID_FIELD, f"{name}.{attr} must be a str")
                try:
                    size = len(value.encode("utf-8"))
                except UnicodeEncodeError:
                    raise local_error(
                        ErrorCode.INVALID_FIELD, f"{name}.{attr} is not encodable as UTF-8"
                    ) from None
                if size > bound:
                    raise local_error(
                        ErrorCode.INVALID_FIELD, f"{name}.{attr} is {size} bytes, limit {bound}"
                    )
            else:
                if type(value) is not bytes:
                    raise local_error(ErrorCode.INVALID_FIELD, f"{name}.{attr} must be bytes")
                if len(value) > bound or (kind == "fixed" and len(value) != bound):
                    raise local_error(
                        ErrorCode.INVALID_FIELD, f"{name}.{attr} has {len(value)} bytes"
                    )
        for attr, kind_enum in self.ENUMS.items():
            object.__setattr__(self, attr, _enum_or_int(kind_enum, getattr(self, attr)))
        self._check()

    def _check(self) -> None:
        """Rules between fields; overridden where there are any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """Edge -> cloud, first message: versions spoken, firmware, resume point for commands.

    The edge's identity is not here: it is the TLS client certificate.
    last_command_id: highest command id the edge has executed (0 = none); the
    cloud redelivers commands it has no result for, the edge answers repeats
    from its own record of results (commands are idempotent by id).
    edge_time: the edge's clock in unix seconds, 0 when it has no trusted time.
    references (extension, version 3; None when not sent): the last sequence number of
    the last acknowledged batch in the edge's reference table (gridwire._references);
    absent when the edge has none, so that the connection starts with an empty one.
    budget_bytes, month_bytes (extensions, any version; None when not sent): the unit's
    monthly data budget (``[uplink] budget_mb_per_month``, absent without one) and the
    bytes it counted on its link this UTC month so far, for the cloud's API.
    """

    TYPE = MessageType.HELLO
    WIRE = (
        ("min_version", U16),
        ("max_version", U16),
        ("firmware_version", ("text", MAX_FIRMWARE_VERSION)),
        ("boot_slot", ("text", MAX_BOOT_SLOT)),
        ("last_command_id", U64),
        ("edge_time", U64),
    )
    min_version: int
    max_version: int
    firmware_version: str
    boot_slot: str
    EXTENSIONS = (
        (2, "references", U64),
        (4, "budget_bytes", ("uint", 63)),  # below 2^63: the cloud stores them as bigint
        (6, "month_bytes", ("uint", 63)),
    )
    last_command_id: int = 0
    edge_time: int = 0
    references: int | None = None
    budget_bytes: int | None = None
    month_bytes: int | None = None

    def _check(self) -> None:
        if not 1 <= self.min_version <= self.max_version:
            raise local_error(
                ErrorCode.INVALID_FIELD, "Hello needs 1 <= min_version <= max_version"
            )
        if self.references is not None and (self.references < 1 or self.max_version < 3):
            raise local_error(
                ErrorCode.INVALID_FIELD, "Hello.references needs max_version >= 3 and a seq >= 1"
            )
        if self.budget_bytes == 0:
            raise local_error(ErrorCode.INVALID_FIELD, "Hello.budget_bytes is absent or >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Message):
    """Cloud -> edge, answer to Hello: chosen version, time, resume point for readings.

    last_acked_seq: highest journal sequence number the cloud has committed for
    this edge (0 = none); the edge resumes sending at last_acked_seq + 1 and may
    drop everything up to it from its journal.
    heartbeat_interval: seconds; the edge sends Ping when it has sent nothing for
    this long, and either side may drop the link after 3 intervals of silence.
    max_in_flight: uploads the edge may have unacknowledged (batches + events).
    max_batch_records, max_frame_size (extension fields, None when not sent):
    the cloud's limits, so the edge never sends a batch the cloud must refuse.
    references (extension, version 3; None when not sent): the sequence number the
    cloud's stored reference table of this edge is as of, when it matches the Hello's
    (gridwire._references); absent: both ends start with an empty table.
    """

    TYPE = MessageType.WELCOME
    WIRE = (
        ("version", U16),
        ("server_time", U64),
        ("last_acked_seq", U64),
        ("heartbeat_interval", U32),
        ("max_in_flight", U16),
    )
    EXTENSIONS = (
        (2, "max_batch_records", U16),
        (4, "max_frame_size", ("uint", 21)),
        (6, "references", U64),
    )
    version: int
    server_time: int
    last_acked_seq: int
    heartbeat_interval: int = 300
    max_in_flight: int = 8
    max_batch_records: int | None = None
    max_frame_size: int | None = None
    references: int | None = None

    def _check(self) -> None:
        if self.version < 1 or self.heartbeat_interval < 1 or self.max_in_flight < 1:
            raise local_error(
                ErrorCode.INVALID_FIELD,
                "Welcome needs version, heartbeat_interval and max_in_flight >= 1",
            )
        if self.max_batch_records == 0 or (
            self.max_frame_size is not None and self.max_frame_size < 64 + MAX_CHUNK
        ):
            raise local_error(
                ErrorCode.INVALID_FIELD,
                f"Welcome needs max_batch_records >= 1 and max_frame_size >= {64 + MAX_CHUNK}",
            )
        if self.references is not None and not (
            self.version >= 3 and 1 <= self.references <= self.last_acked_seq
        ):
            raise local_error(
                ErrorCode.INVALID_FIELD,
                "Welcome.references needs version >= 3 and 1 <= references <= last_acked_seq",
            )


class ReadingBatch(Message):
    """Edge -> cloud: interval records with consecutive journal sequence numbers.

    Record i has sequence number first_seq + i.  Build it from records
    (``records=``) or, faster, from columns (``columns=RecordColumns.build(...)``);
    read it back either way: ``.records`` (IntervalRecord objects, made on
    first use) or ``.columns`` / ``.columns.rows()`` (no per-record objects).
    """

    __slots__ = ("_columns", "_records", "first_seq")
    TYPE = MessageType.READING_BATCH
    WIRE = (("first_seq", U64),)
    first_seq: int
    _columns: RecordColumns
    _records: tuple[IntervalRecord, ...] | None

    def __init__(
        self,
        *,
        first_seq: int,
        records: Iterable[IntervalRecord] | None = None,
        columns: RecordColumns | None = None,
    ) -> None:
        if (records is None) == (columns is None):
            raise local_error(ErrorCode.INVALID_FIELD, "ReadingBatch needs records or columns")
        if type(first_seq) is not int or first_seq < 1:
            raise local_error(ErrorCode.INVALID_FIELD, "ReadingBatch.first_seq must be >= 1")
        if records is not None:
            kept = tuple(records)
            columns = RecordColumns.from_records(kept)
        else:
            kept = None
            if not isinstance(columns, RecordColumns):
                raise local_error(ErrorCode.INVALID_FIELD, "columns must be RecordColumns")
        assert columns is not None
        if len(columns) == 0:
            raise local_error(ErrorCode.INVALID_FIELD, "a ReadingBatch holds at least one record")
        if first_seq + len(columns) - 1 >= 1 << 64:
            raise local_error(ErrorCode.INVALID_FIELD, "ReadingBatch sequence numbers overflow u64")
        object.__setattr__(self, "first_seq", first_seq)
        object.__setattr__(self, "_columns", columns)
        object.__setattr__(self, "_records", kept)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ReadingBatch is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ReadingBatch is immutable")

    @property
    def columns(self) -> RecordColumns:
        """The records field by field."""
        return self._columns

    @property
    def records(self) -> tuple[IntervalRecord, ...]:
        """The records as IntervalRecord objects (built once, on first use)."""
        if self._records is None:
            object.__setattr__(self, "_records", self._columns.records())
        assert self._records is not None
        return self._records

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record."""
        return self.first_seq + len(self._columns) - 1

    def __len__(self) -> int:
        return len(self._columns)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReadingBatch):
            return NotImplemented
        return self.first_seq == other.first_seq and self._columns == other._columns

    def __hash__(self) -> int:
        return hash((self.first_seq, self._columns))

    def __repr__(self) -> str:
        return f"ReadingBatch(first_seq={self.first_seq}, records=<{len(self)} records>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """Cloud -> edge: every sequence number <= up_to_seq is committed (cumulative)."""

    TYPE = MessageType.ACK
    WIRE = (("up_to_seq", U64),)
    up_to_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EventReport(Message):
    """Edge -> cloud: one alarm, journalled like a reading, acknowledged by Ack.

    seq comes from the same journal sequence space as reading batches, so one
    cumulative Ack covers both and the edge has one resume point.
    """

    TYPE = MessageType.EVENT_REPORT
    WIRE = (("seq", U64), ("meter_id", U32), ("time", U64), ("kind", U16), ("detail", TEXT))
    ENUMS: ClassVar[dict[str, type[enum.IntEnum]]] = {"kind": AlarmKind}
    seq: int
    meter_id: int
    time: int
    kind: int
    detail: str = ""

    def _check(self) -> None:
        if self.seq < 1:
            raise local_error(ErrorCode.INVALID_FIELD, "EventReport.seq must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Command(Message):
    """Cloud -> edge: do something; executed at most once per command_id.

    ``expires_at`` (extension, Unix seconds, 0: never) is when the command stops being
    worth executing; an edge that does not know the extension skips it.
    """

    TYPE = MessageType.COMMAND
    WIRE = (
        ("command_id", U64),
        ("kind", U16),
        ("meter_id", U32),
        ("payload", ("blob", MAX_PAYLOAD)),
    )
    EXTENSIONS = ((2, "expires_at", U64),)
    ENUMS: ClassVar[dict[str, type[enum.IntEnum]]] = {"kind": CommandKind}
    command_id: int
    kind: int
    meter_id: int = 0
    payload: bytes = b""
    expires_at: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult(Message):
    """Edge -> cloud: outcome of a command."""

    TYPE = MessageType.COMMAND_RESULT
    WIRE = (("command_id", U64), ("status", ("uint", 8)), ("detail", TEXT))
    ENUMS: ClassVar[dict[str, type[enum.IntEnum]]] = {"status": CommandStatus}
    command_id: int
    status: int
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    """Either side: are you there?  Answered by Pong with the same nonce."""

    TYPE = MessageType.PING
    WIRE = (("nonce", U32),)
    nonce: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Message):
    """Answer to Ping."""

    TYPE = MessageType.PONG
    WIRE = (("nonce", U32),)
    nonce: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareOffer(Message):
    """Cloud -> edge: an update bundle is available; the edge pulls it chunk by chunk.

    Chunk i covers bytes i*chunk_size .. min(size, (i+1)*chunk_size) - 1.

    A delta offer (extensions, all three set) carries not the bundle but a patch that
    rebuilds it from a bundle the edge already holds: ``delta_base`` is that bundle's
    sha256, ``target_sha256``/``target_size`` the rebuilt bundle's, checked before
    install.  The cloud offers the full bundle beside it (another offer_id, same
    version), so an edge without the base takes the full one: no round trip to ask.
    An edge that does not know the extensions skips them and sees a blob that is not
    a bundle; it then fails the signature check (REJECTED) and the full offer remains.
    """

    TYPE = MessageType.FIRMWARE_OFFER
    WIRE = (
        ("offer_id", U64),
        ("version", ("text", MAX_FIRMWARE_VERSION)),
        ("size", ("uint", 40)),
        ("sha256", ("fixed", 32)),
        ("chunk_size", U32),
    )
    EXTENSIONS = (
        (2, "delta_base", ("fixed", 32)),
        (4, "target_size", ("uint", 40)),
        (6, "target_sha256", ("fixed", 32)),
    )
    offer_id: int
    version: str
    size: int
    sha256: bytes
    chunk_size: int = 32768
    delta_base: bytes | None = None
    target_size: int = 0
    target_sha256: bytes | None = None

    def _check(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK or self.size < 1:
            raise local_error(
                ErrorCode.INVALID_FIELD, f"FirmwareOffer needs size >= 1, chunk_size 1..{MAX_CHUNK}"
            )
        delta = (self.delta_base is not None, self.target_sha256 is not None, self.target_size > 0)
        if any(delta) and not all(delta):
            raise local_error(
                ErrorCode.INVALID_FIELD,
                "FirmwareOffer: a delta needs delta_base, target_size and target_sha256 together",
            )

    @property
    def is_delta(self) -> bool:
        """True when the blob is a patch against ``delta_base``, not the bundle itself."""
        return self.delta_base is not None

    @property
    def chunk_count(self) -> int:
        """Number of chunks in the bundle."""
        return -(-self.size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Exact length of chunk ``index``."""
        return min(self.chunk_size, self.size - index * self.chunk_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRequest(Message):
    """Edge -> cloud: send chunk ``index`` of offer ``offer_id``."""

    TYPE = MessageType.CHUNK_REQUEST
    WIRE = (("offer_id", U64), ("index", U32))
    offer_id: int
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareChunk(Message):
    """Cloud -> edge: one chunk of an offered bundle."""

    TYPE = MessageType.FIRMWARE_CHUNK
    WIRE = (("offer_id", U64), ("index", U32), ("data", ("blob", MAX_CHUNK)))
    offer_id: int
    index: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareStatus(Message):
    """Edge -> cloud: progress or outcome of an update."""

    TYPE = MessageType.FIRMWARE_STATUS
    WIRE = (("offer_id", U64), ("state", ("uint", 8)), ("received", ("uint", 40)), ("detail", TEXT))
    ENUMS: ClassVar[dict[str, type[enum.IntEnum]]] = {"state": FirmwareState}
    offer_id: int
    state: int
    received: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Message):
    """Either side, last message before closing: why (an ErrorCode value) and a text.

    retry_after (extension tag 2, optional): seconds the receiver should wait before
    connecting again (0 = no hint); a cloud whose database is down says how long.
    """

    TYPE = MessageType.ERROR
    WIRE = (("code", U16), ("detail", TEXT))
    EXTENSIONS = ((2, "retry_after", U32),)
    ENUMS: ClassVar[dict[str, type[enum.IntEnum]]] = {"code": ErrorCode}
    code: int
    detail: str = ""
    retry_after: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRequest(Message):
    """Edge -> cloud (optional, 0x80): sign a new key for this edge; ``csr`` is a PKCS#10
    request in DER.

    The identity it may name is the one of the connection's client certificate; the cloud
    answers CertificateIssued, in this connection or not at all (the edge asks again on a
    later one with the same key, and the cloud answers the same certificate).
    """

    TYPE = MessageType.CERTIFICATE_REQUEST
    WIRE = (("csr", ("blob", MAX_CSR)),)
    csr: bytes = field(repr=False)

    def _check(self) -> None:
        if not self.csr:
            raise local_error(ErrorCode.INVALID_FIELD, "CertificateRequest.csr is empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateIssued(Message):
    """Cloud -> edge (optional, 0x81): the answer to CertificateRequest.

    ``certificate``: the new certificate (DER); ``issuer``: the certificate of the CA that
    signed it (DER), which the edge keeps beside it.  Both empty when the cloud refuses,
    ``detail`` saying why.
    """

    TYPE = MessageType.CERTIFICATE_ISSUED
    WIRE = (
        ("certificate", ("blob", MAX_CERTIFICATE)),
        ("issuer", ("blob", MAX_CERTIFICATE)),
        ("detail", TEXT),
    )
    certificate: bytes = field(default=b"", repr=False)
    issuer: bytes = field(default=b"", repr=False)
    detail: str = ""

    def _check(self) -> None:
        if bool(self.certificate) != bool(self.issuer):
            raise local_error(
                ErrorCode.INVALID_FIELD,
                "CertificateIssued needs certificate and issuer together (or neither: refused)",
            )


#: Every message class by wire type code.
MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        ReadingBatch,
        Ack,
        EventReport,
        Command,
        CommandResult,
        Ping,
        Pong,
        FirmwareOffer,
        ChunkRequest,
        FirmwareChunk,
        FirmwareStatus,
        Error,
        CertificateRequest,
        CertificateIssued,
    )
}


def describe(cls: type[Message]) -> str:
    """The body layout of a message class as a Markdown table (pasted into docs/protocol.md)."""
    lines = ["| # | field | encoding |", "| --- | --- | --- |"]
    kinds = {
        "uint": "uvarint, < 2^{}",
        "text": "uvarint length + UTF-8, at most {} bytes",
        "blob": "uvarint length + bytes, at most {} bytes",
        "fixed": "exactly {} bytes",
    }
    for number, (name, (kind, bound)) in enumerate(cls.WIRE, start=1):
        lines.append(f"| {number} | {name} | {kinds[kind].format(bound)} |")
    for tag, name, (kind, bound) in cls.EXTENSIONS:
        optional = "optional" if tag % 2 == 0 else "critical"
        lines.append(
            f"| ext {tag} | {name} | {kinds[kind].format(bound)}; {optional}, sent when not 0 |"
        )
    if cls is ReadingBatch:
        lines.append("| 2 | (batch) | reading batch body, see below |")
    return "\n".join(lines)
