"""Radio frames: the typed messages exchanged with the radio module.

Frame objects are frozen, slotted dataclasses validated on construction where
a wrong value could reach the wire (counts, interval alignment, statuses), so
an invalid frame cannot be built by accident.  Their byte layouts are data in
``_layouts`` and the codec that reads them is ``_codec``; nothing here knows
about bytes.

The interval record is ``gridwire.IntervalRecord``: the radio protocol carries
exactly its fields, so a record decoded from a radio frame is the very object
the edge journals and later batches to the cloud, with no conversion step
where a field could be lost or mixed up.

Tests: tests/radio_codec/test_frames.py (validation, round trips).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from gridwire import IntervalRecord

__all__ = [
    "INTERVAL_SECONDS",
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
]

#: Length of one metering interval: interval ends are multiples of this many
#: seconds since the Unix epoch (docs/radio.md, "Intervals").
INTERVAL_SECONDS = 900

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


@dataclass(frozen=True, slots=True)
class IntervalReport:
    """A meter's reading for the interval that just ended, pushed unasked."""

    TYPE: ClassVar[FrameType] = FrameType.INTERVAL_REPORT
    record: IntervalRecord


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


@dataclass(frozen=True, slots=True)
class RelayCommand:
    """Open (disconnect supply) or close (reconnect) a meter's load relay."""

    TYPE: ClassVar[FrameType] = FrameType.RELAY_COMMAND
    cmd_id: int
    meter_id: int
    open: bool


@dataclass(frozen=True, slots=True)
class RelayConfirm:
    """The outcome of relay command ``cmd_id``; ``relay`` is the position afterwards."""

    TYPE: ClassVar[FrameType] = FrameType.RELAY_CONFIRM
    cmd_id: int
    meter_id: int
    open: bool
    status: RelayStatus
    relay: RelayState


@dataclass(frozen=True, slots=True)
class MeterJoin:
    """A meter joined the mesh (power-up, or found again after being lost)."""

    TYPE: ClassVar[FrameType] = FrameType.METER_JOIN
    meter_id: int
    parent_id: int
    hops: int
    rssi: int


@dataclass(frozen=True, slots=True)
class MeterLeave:
    """A meter left the mesh."""

    TYPE: ClassVar[FrameType] = FrameType.METER_LEAVE
    meter_id: int
    reason: LeaveReason


@dataclass(frozen=True, slots=True)
class MeshStatus:
    """Where a meter sits in the mesh: its parent (0 = the module), hop count, RSSI in dBm."""

    TYPE: ClassVar[FrameType] = FrameType.MESH_STATUS
    meter_id: int
    parent_id: int
    hops: int
    rssi: int


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    """The module's heartbeat; ``module_time`` (Unix seconds, UTC) is the mesh's clock."""

    TYPE: ClassVar[FrameType] = FrameType.MODULE_STATUS
    module_time: int
    uptime: int
    meters_joined: int
    queue_depth: int
    firmware: int


@dataclass(frozen=True, slots=True)
class ModuleReset:
    """Sent once after the module restarted: everything in flight before is lost."""

    TYPE: ClassVar[FrameType] = FrameType.MODULE_RESET
    module_time: int
    reason: ResetReason
    boot_count: int


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
