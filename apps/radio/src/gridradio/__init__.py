"""gridradio: the sans-IO serial protocol between the grid edge unit and its radio module.

Bytes in -> frames out, frames in -> bytes out; no serial port, no Twisted, no
clock.  The specification is docs/radio.md; this module is the whole public
API (everything else is private and may change).

    decoder = FrameDecoder()
    for frame in decoder.feed(received): ...      # never raises; drops are counted
    port.write(encode(PollRequest(cmd_id=7, meter_id=100001, first_end=1767572100, count=2)))

The interval record is ``gridwire.IntervalRecord`` itself (re-exported here
with its ``Flags``): one type from the radio frame to the cloud.

Tests: tests/radio_codec/ (test_radio_api.py pins this surface).
"""

from gridwire import Flags, IntervalRecord

from ._codec import decode_payload, encode_payload
from ._crc import CHECK_VALUE, crc16, frame_ok
from ._frames import (
    INTERVAL_SECONDS,
    MAX_POLL_COUNT,
    Frame,
    FrameError,
    FrameType,
    IntervalReport,
    LeaveReason,
    MeshStatus,
    MeterJoin,
    MeterLeave,
    ModuleReset,
    ModuleStatus,
    PollRequest,
    PollResponse,
    PollStatus,
    RelayCommand,
    RelayConfirm,
    RelayState,
    RelayStatus,
    ResetReason,
)
from ._framing import (
    END,
    ESC,
    ESC_END,
    ESC_ESC,
    MAX_STUFFED,
    FrameDecoder,
    encode,
    encode_many,
    stuff,
)

__all__ = [
    "CHECK_VALUE",
    "END",
    "ESC",
    "ESC_END",
    "ESC_ESC",
    "INTERVAL_SECONDS",
    "MAX_POLL_COUNT",
    "MAX_STUFFED",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameType",
    "IntervalRecord",
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
    "crc16",
    "decode_payload",
    "encode",
    "encode_many",
    "encode_payload",
    "frame_ok",
    "stuff",
]
