"""Radio frames: the typed messages exchanged with the radio module, and their byte layouts.

Contract (sans-IO, in the style of h11): :func:`decode_payload` takes one
unstuffed frame (type byte, body, CRC) and returns a frame object or raises
:class:`FrameError` naming what was wrong; :func:`encode_payload` is its
inverse.  Nothing else happens here: no I/O, no clocks, no state.  The byte
layouts are specified in docs/radio.md; every integer is big-endian.

Frame objects are frozen, slotted dataclasses validated on construction where
a wrong value could reach the wire (counts, statuses), so an invalid frame
cannot be built by accident.

Tests: tests/radio/test_frames.py (round trips, worked examples from
docs/radio.md, fuzzing).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from .crc import crc16, frame_ok
from .records import INTERVAL_SECONDS, IntervalRecord

__all__ = [
    "MAX_POLL_COUNT",
    "Frame",
    "FrameError",
    "FrameType",
    "IntervalReport",
    "LeaveReason",
    "MeshStatus",
    "MeterJoin",
    "MeterLeave",
    "ModuleReset",
    "ModuleStatus",
    "PollRequest",
    "PollResponse",
    "PollStatus",
    "RelayCommand",
    "RelayConfirm",
    "RelayState",
    "RelayStatus",
    "ResetReason",
    "decode_payload",
    "encode_payload",
]

#: Most intervals one poll may ask for (keeps a response under 400 bytes).
MAX_POLL_COUNT = 16


class FrameType(enum.IntEnum):
    """The first byte of every frame."""

    INTERVAL_REPORT = 0x01  #: module -> edge
    POLL_REQUEST = 0x02  #: edge -> module
    POLL_RESPONSE = 0x03  #: module -> edge
    RELAY_COMMAND = 0x04  #: edge -> module
    RELAY_CONFIRM = 0x05  #: module -> edge
    METER_JOIN = 0x06  #: module -> edge
    METER_LEAVE = 0x07  #: module -> edge
    MESH_STATUS = 0x08  #: module -> edge
    MODULE_STATUS = 0x09  #: module -> edge
    MODULE_RESET = 0x0A  #: module -> edge


class PollStatus(enum.IntEnum):
    """Outcome of a poll, as the module reports it."""

    OK = 0  #: the meter answered; the records it holds for the range follow
    NO_RESPONSE = 1  #: the meter did not answer over the mesh
    UNKNOWN_METER = 2  #: no such meter has joined this module
    BUSY = 3  #: the module's queue is full; ask again later


class RelayStatus(enum.IntEnum):
    """Outcome of a relay command, as the module reports it."""

    OK = 0  #: the meter switched (or already was) as asked
    NO_RESPONSE = 1
    UNKNOWN_METER = 2
    BUSY = 3
    REFUSED = 4  #: the meter refused (e.g. tamper lock-out)


class RelayState(enum.IntEnum):
    """The load relay's position after a command."""

    CLOSED = 0  #: supply connected
    OPEN = 1  #: supply disconnected
    UNKNOWN = 2


class LeaveReason(enum.IntEnum):
    UNSPECIFIED = 0
    LOST = 1  #: the mesh lost contact with the meter
    POWER_DOWN = 2  #: the meter announced it is losing power


class ResetReason(enum.IntEnum):
    POWER_ON = 0
    WATCHDOG = 1
    COMMANDED = 2
    BROWNOUT = 3


class FrameError(ValueError):
    """A frame that must be dropped; ``kind`` names the counter it goes to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _enum(kind: type[enum.IntEnum], value: int, what: str) -> enum.IntEnum:
    try:
        return kind(value)
    except ValueError:
        raise FrameError("value", f"{what} {value} is not a known value") from None


# --- byte layouts (see docs/radio.md) --------------------------------------------------

#: One record without its meter id: interval_end, energy_wh, max_demand_w,
#: voltage_dv, current_ma, power_factor (signed), flags.
_RECORD = struct.Struct(">IIIHIhH")
_REPORT = struct.Struct(">IIIIHIhH")
_POLL_REQUEST = struct.Struct(">HIIB")
_POLL_RESPONSE = struct.Struct(">HIIBBIIB")
_RELAY_COMMAND = struct.Struct(">HIB")
_RELAY_CONFIRM = struct.Struct(">HIBBB")
_JOIN = struct.Struct(">IIBb")
_LEAVE = struct.Struct(">IB")
_MESH = struct.Struct(">IIBb")
_MODULE_STATUS = struct.Struct(">IIHHH")
_MODULE_RESET = struct.Struct(">IBH")


def _check_pf(pf: int) -> None:
    if not -1000 <= pf <= 1000:
        raise FrameError("value", f"power factor {pf} not in -1000..1000")


@dataclass(frozen=True, slots=True)
class IntervalReport:
    """A meter's reading for the interval that just ended, pushed unasked."""

    TYPE: ClassVar[FrameType] = FrameType.INTERVAL_REPORT
    record: IntervalRecord

    def body(self) -> bytes:
        return _REPORT.pack(*self.record)


@dataclass(frozen=True, slots=True)
class PollRequest:
    """Ask a meter for ``count`` consecutive intervals ending at ``first_end``, +900 s, ..."""

    TYPE: ClassVar[FrameType] = FrameType.POLL_REQUEST
    cmd_id: int
    meter_id: int
    first_end: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_POLL_COUNT:
            raise FrameError("value", f"poll count {self.count} not in 1..{MAX_POLL_COUNT}")
        if self.first_end % INTERVAL_SECONDS:
            raise FrameError("value", f"first_end {self.first_end} is not an interval end")

    def body(self) -> bytes:
        return _POLL_REQUEST.pack(self.cmd_id, self.meter_id, self.first_end, self.count)


@dataclass(frozen=True, slots=True)
class PollResponse:
    """The meter's records for a polled range.

    ``oldest_end`` and ``newest_end`` bound what the meter holds (0, 0 when it
    holds nothing): an interval of the range that is missing from ``records``
    and older than ``oldest_end`` will never exist; one newer than
    ``newest_end`` has not been recorded yet.
    """

    TYPE: ClassVar[FrameType] = FrameType.POLL_RESPONSE
    cmd_id: int
    meter_id: int
    first_end: int
    count: int
    status: PollStatus
    oldest_end: int
    newest_end: int
    records: tuple[IntervalRecord, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_POLL_COUNT:
            raise FrameError("value", f"poll count {self.count} not in 1..{MAX_POLL_COUNT}")
        if self.status != PollStatus.OK and self.records:
            raise FrameError("value", "a failed poll carries no records")
        last = self.first_end + (self.count - 1) * INTERVAL_SECONDS
        previous = -1
        for record in self.records:
            end = record.interval_end
            if record.meter_id != self.meter_id:
                raise FrameError("value", "record of another meter in a poll response")
            if end <= previous or not self.first_end <= end <= last:
                raise FrameError("value", f"record {end} outside the polled range or unordered")
            if (end - self.first_end) % INTERVAL_SECONDS:
                raise FrameError("value", f"record {end} is not an interval end of the range")
            previous = end

    def body(self) -> bytes:
        head = _POLL_RESPONSE.pack(
            self.cmd_id,
            self.meter_id,
            self.first_end,
            self.count,
            self.status,
            self.oldest_end,
            self.newest_end,
            len(self.records),
        )
        return head + b"".join(_RECORD.pack(*r[1:]) for r in self.records)


@dataclass(frozen=True, slots=True)
class RelayCommand:
    """Open (disconnect supply) or close (reconnect) a meter's load relay."""

    TYPE: ClassVar[FrameType] = FrameType.RELAY_COMMAND
    cmd_id: int
    meter_id: int
    open: bool

    def body(self) -> bytes:
        return _RELAY_COMMAND.pack(self.cmd_id, self.meter_id, int(self.open))


@dataclass(frozen=True, slots=True)
class RelayConfirm:
    """The outcome of relay command ``cmd_id``; ``relay`` is the position afterwards."""

    TYPE: ClassVar[FrameType] = FrameType.RELAY_CONFIRM
    cmd_id: int
    meter_id: int
    open: bool
    status: RelayStatus
    relay: RelayState

    def body(self) -> bytes:
        return _RELAY_CONFIRM.pack(
            self.cmd_id, self.meter_id, int(self.open), self.status, self.relay
        )


@dataclass(frozen=True, slots=True)
class MeterJoin:
    """A meter joined the mesh (power-up, or found again after being lost)."""

    TYPE: ClassVar[FrameType] = FrameType.METER_JOIN
    meter_id: int
    parent_id: int
    hops: int
    rssi: int

    def body(self) -> bytes:
        return _JOIN.pack(self.meter_id, self.parent_id, self.hops, self.rssi)


@dataclass(frozen=True, slots=True)
class MeterLeave:
    """A meter left the mesh."""

    TYPE: ClassVar[FrameType] = FrameType.METER_LEAVE
    meter_id: int
    reason: LeaveReason

    def body(self) -> bytes:
        return _LEAVE.pack(self.meter_id, self.reason)


@dataclass(frozen=True, slots=True)
class MeshStatus:
    """Where a meter sits in the mesh: its parent (0 = the module), hop count, RSSI in dBm."""

    TYPE: ClassVar[FrameType] = FrameType.MESH_STATUS
    meter_id: int
    parent_id: int
    hops: int
    rssi: int

    def body(self) -> bytes:
        return _MESH.pack(self.meter_id, self.parent_id, self.hops, self.rssi)


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    """The module's heartbeat; ``module_time`` (Unix seconds, UTC) is the mesh's clock."""

    TYPE: ClassVar[FrameType] = FrameType.MODULE_STATUS
    module_time: int
    uptime: int
    meters_joined: int
    queue_depth: int
    firmware: int

    def body(self) -> bytes:
        return _MODULE_STATUS.pack(
            self.module_time, self.uptime, self.meters_joined, self.queue_depth, self.firmware
        )


@dataclass(frozen=True, slots=True)
class ModuleReset:
    """Sent once after the module restarted: everything in flight before is lost."""

    TYPE: ClassVar[FrameType] = FrameType.MODULE_RESET
    module_time: int
    reason: ResetReason
    boot_count: int

    def body(self) -> bytes:
        return _MODULE_RESET.pack(self.module_time, self.reason, self.boot_count)


Frame = (
    IntervalReport
    | PollRequest
    | PollResponse
    | RelayCommand
    | RelayConfirm
    | MeterJoin
    | MeterLeave
    | MeshStatus
    | ModuleStatus
    | ModuleReset
)


def encode_payload(frame: Frame) -> bytes:
    """Type byte, body and CRC of ``frame``: the bytes that get byte-stuffed."""
    try:
        data = bytes((frame.TYPE,)) + frame.body()
    except struct.error as exc:
        raise FrameError("value", f"{type(frame).__name__} field out of range: {exc}") from None
    return data + crc16(data).to_bytes(2, "big")


def _fixed(layout: struct.Struct, body: bytes, name: str) -> tuple[int, ...]:
    if len(body) != layout.size:
        raise FrameError("length", f"{name} body is {len(body)} bytes, expected {layout.size}")
    return layout.unpack(body)


_make_record = IntervalRecord._make
_unpack_report = _REPORT.unpack
_REPORT_SIZE = _REPORT.size


def _decode_report(body: bytes) -> IntervalReport:
    if len(body) != _REPORT_SIZE:
        raise FrameError("length", f"report body is {len(body)} bytes, expected {_REPORT_SIZE}")
    values = _unpack_report(body)
    if not -1000 <= values[6] <= 1000:
        _check_pf(values[6])
    return IntervalReport(_make_record(values))


def _decode_poll_request(body: bytes) -> PollRequest:
    cmd_id, meter_id, first_end, count = _fixed(_POLL_REQUEST, body, "poll request")
    return PollRequest(cmd_id, meter_id, first_end, count)


def _decode_poll_response(body: bytes) -> PollResponse:
    head = _POLL_RESPONSE.size
    if len(body) < head:
        raise FrameError("length", f"poll response body is {len(body)} bytes, at least {head}")
    cmd_id, meter_id, first_end, count, status, oldest, newest, n = _POLL_RESPONSE.unpack_from(body)
    if len(body) != head + n * _RECORD.size:
        raise FrameError("length", f"poll response with {n} records is {len(body)} bytes")
    records = []
    for values in _RECORD.iter_unpack(body[head:]):
        _check_pf(values[5])
        records.append(_make_record((meter_id, *values)))
    return PollResponse(
        cmd_id,
        meter_id,
        first_end,
        count,
        PollStatus(_enum(PollStatus, status, "poll status")),
        oldest,
        newest,
        tuple(records),
    )


def _decode_relay_command(body: bytes) -> RelayCommand:
    cmd_id, meter_id, action = _fixed(_RELAY_COMMAND, body, "relay command")
    if action > 1:
        raise FrameError("value", f"relay action {action} is neither 0 (close) nor 1 (open)")
    return RelayCommand(cmd_id, meter_id, bool(action))


def _decode_relay_confirm(body: bytes) -> RelayConfirm:
    cmd_id, meter_id, action, status, relay = _fixed(_RELAY_CONFIRM, body, "relay confirm")
    if action > 1:
        raise FrameError("value", f"relay action {action} is neither 0 (close) nor 1 (open)")
    return RelayConfirm(
        cmd_id,
        meter_id,
        bool(action),
        RelayStatus(_enum(RelayStatus, status, "relay status")),
        RelayState(_enum(RelayState, relay, "relay state")),
    )


def _decode_join(body: bytes) -> MeterJoin:
    return MeterJoin(*_fixed(_JOIN, body, "meter join"))


def _decode_leave(body: bytes) -> MeterLeave:
    meter_id, reason = _fixed(_LEAVE, body, "meter leave")
    return MeterLeave(meter_id, LeaveReason(_enum(LeaveReason, reason, "leave reason")))


def _decode_mesh(body: bytes) -> MeshStatus:
    return MeshStatus(*_fixed(_MESH, body, "mesh status"))


def _decode_module_status(body: bytes) -> ModuleStatus:
    return ModuleStatus(*_fixed(_MODULE_STATUS, body, "module status"))


def _decode_module_reset(body: bytes) -> ModuleReset:
    module_time, reason, boot_count = _fixed(_MODULE_RESET, body, "module reset")
    return ModuleReset(
        module_time, ResetReason(_enum(ResetReason, reason, "reset reason")), boot_count
    )


_DECODERS: dict[FrameType, Callable[[bytes], Frame]] = {
    FrameType.INTERVAL_REPORT: _decode_report,
    FrameType.POLL_REQUEST: _decode_poll_request,
    FrameType.POLL_RESPONSE: _decode_poll_response,
    FrameType.RELAY_COMMAND: _decode_relay_command,
    FrameType.RELAY_CONFIRM: _decode_relay_confirm,
    FrameType.METER_JOIN: _decode_join,
    FrameType.METER_LEAVE: _decode_leave,
    FrameType.MESH_STATUS: _decode_mesh,
    FrameType.MODULE_STATUS: _decode_module_status,
    FrameType.MODULE_RESET: _decode_module_reset,
}
_DECODER_BY_BYTE: dict[int, Callable[[bytes], Frame]] = {int(k): v for k, v in _DECODERS.items()}


def decode_payload(payload: bytes) -> Frame:
    """The frame in ``payload`` (type, body, CRC; already unstuffed), or FrameError."""
    if len(payload) < 3:
        raise FrameError("short", f"frame of {len(payload)} bytes is shorter than 3")
    if not frame_ok(payload):
        raise FrameError("crc", "CRC mismatch")
    decoder = _DECODER_BY_BYTE.get(payload[0])
    if decoder is None:
        raise FrameError("unknown_type", f"unknown frame type 0x{payload[0]:02x}")
    return decoder(payload[1:-2])
