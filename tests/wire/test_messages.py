"""Messages and records are validated on construction: an invalid one cannot exist."""

from __future__ import annotations

from typing import Any

import pytest
from gridwire import (
    AlarmKind,
    Command,
    CommandKind,
    Error,
    ErrorCode,
    EventReport,
    FirmwareOffer,
    Flags,
    Hello,
    IntervalRecord,
    Limits,
    Ping,
    ProtocolError,
    ReadingBatch,
    RecordColumns,
    Welcome,
)
from gridwire._codec import FrameDecoder, frame

GOOD_RECORD = dict(
    meter_id=1,
    interval_end=1_764_000_000,
    energy_wh=10,
    max_demand_w=2,
    voltage_dv=2300,
    current_ma=5,
    power_factor=-990,
    flags=Flags.RELAY_OPEN | Flags.TAMPER,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("meter_id", -1),
        ("meter_id", 2**32),
        ("energy_wh", 2**64),
        ("voltage_dv", 65536),
        ("power_factor", 1001),
        ("power_factor", -1001),
        ("flags", 2**16),
        ("current_ma", 1.5),
        ("max_demand_w", True),
        ("interval_end", "1764000000"),
    ],
)
def test_invalid_record_is_refused(field: str, value: Any) -> None:
    """Every out-of-range or non-int record field raises a LOCAL INVALID_FIELD naming the field."""
    with pytest.raises(ProtocolError) as info:
        IntervalRecord(**{**GOOD_RECORD, field: value})
    assert info.value.local and info.value.code is ErrorCode.INVALID_FIELD
    assert field in str(info.value)


def test_record_is_immutable_and_flags_readable() -> None:
    """Records cannot be changed after construction and expose their flags as Flags."""
    record = IntervalRecord(**GOOD_RECORD)
    with pytest.raises(AttributeError):
        record.energy_wh = 5  # type: ignore[misc]
    assert record.flag_set == Flags.RELAY_OPEN | Flags.TAMPER
    assert not hasattr(record, "__dict__")


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Hello, dict(min_version=2, max_version=1, firmware_version="1", boot_slot="A")),
        (Hello, dict(min_version=0, max_version=1, firmware_version="1", boot_slot="A")),
        (Hello, dict(min_version=1, max_version=1, firmware_version="x" * 65, boot_slot="A")),
        (Hello, dict(min_version=1, max_version=1, firmware_version="1", boot_slot="\udcff")),
        (Welcome, dict(version=1, server_time=0, last_acked_seq=-1)),
        (Welcome, dict(version=1, server_time=0, last_acked_seq=0, max_in_flight=0)),
        (EventReport, dict(seq=0, meter_id=1, time=0, kind=1)),
        (Command, dict(command_id=1, kind=1, payload=bytes(4097))),
        (Command, dict(command_id=1, kind=1, payload="text")),
        (Ping, dict(nonce=2**32)),
        (FirmwareOffer, dict(offer_id=1, version="2", size=10, sha256=bytes(31))),
        (FirmwareOffer, dict(offer_id=1, version="2", size=10, sha256=bytes(32), chunk_size=0)),
        (Error, dict(code=1, detail="é" * 128)),
    ],
)
def test_invalid_message_is_refused(cls: type, kwargs: dict[str, Any]) -> None:
    """Out-of-range fields and broken cross-field rules raise a LOCAL INVALID_FIELD."""
    with pytest.raises(ProtocolError) as info:
        cls(**kwargs)
    assert info.value.local and info.value.code is ErrorCode.INVALID_FIELD


def test_messages_are_frozen_and_keyword_only() -> None:
    """Messages take keyword arguments only and cannot be modified."""
    with pytest.raises(TypeError):
        Ping(1)  # type: ignore[misc]
    ping = Ping(nonce=1)
    with pytest.raises(AttributeError):
        ping.nonce = 2  # type: ignore[misc]
    batch = ReadingBatch(first_seq=1, records=[IntervalRecord(**GOOD_RECORD)])
    with pytest.raises(AttributeError):
        batch.first_seq = 2  # type: ignore[misc]


def test_known_codes_become_enums_unknown_stay_ints() -> None:
    """Known kind/status/code values read back as enum members, unknown ones as plain ints."""
    assert Command(command_id=1, kind=1).kind is CommandKind.RELAY_OPEN
    assert Command(command_id=1, kind=999).kind == 999
    assert EventReport(seq=1, meter_id=1, time=1, kind=6).kind is AlarmKind.VOLTAGE_SAG
    assert Error(code=2).code is ErrorCode.FRAME_TOO_LARGE


def test_reading_batch_from_records_or_columns() -> None:
    """A batch built from records equals one built from the same columns; bad inputs are refused."""
    record = IntervalRecord(**GOOD_RECORD)
    by_records = ReadingBatch(first_seq=5, records=[record, record])
    columns = RecordColumns.build(**{name: [value, value] for name, value in GOOD_RECORD.items()})
    by_columns = ReadingBatch(first_seq=5, columns=columns)
    assert by_records == by_columns and by_columns.records == (record, record)
    assert by_columns.last_seq == 6 and len(by_columns) == 2
    for kwargs in (
        dict(first_seq=5),
        dict(first_seq=0, records=[record]),
        dict(first_seq=5, records=[]),
        dict(first_seq=2**64 - 1, records=[record, record]),
        dict(first_seq=1, records=[tuple(record)]),
    ):
        with pytest.raises(ProtocolError):
            ReadingBatch(**kwargs)  # type: ignore[arg-type]
    for bad in (dict(meter_id=[1]), {**{n: [0] for n in GOOD_RECORD}, "voltage_dv": [1.0]}):
        with pytest.raises(ProtocolError):
            RecordColumns.build(**bad)


def test_decoded_invalid_message_blames_the_peer() -> None:
    """A frame that decodes to an invalid message (Hello min > max) is a REMOTE INVALID_FIELD."""
    body = bytes([2, 1, 1]) + b"1" + bytes([1]) + b"A" + bytes([0, 0])
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(Limits()).feed(frame(0x01, body))
    assert info.value.remote and info.value.code is ErrorCode.INVALID_FIELD


def test_limits_are_validated() -> None:
    """Limits outside what the frame format can express are refused."""
    for kwargs in (
        dict(max_frame_size=1000),
        dict(max_frame_size=2**21),
        dict(max_batch_records=0),
    ):
        with pytest.raises(ProtocolError):
            Limits(**kwargs)


def test_record_columns_constructor_validates() -> None:
    """Direct RecordColumns construction checks tuple types, equal lengths and ranges too."""
    good = tuple((value,) for value in GOOD_RECORD.values())
    assert len(RecordColumns(*good[:7], (0,))) == 1
    for bad in (
        (*good[:7], (0, 0)),  # lengths differ
        (*good[:7], [0]),  # not a tuple
        (*good[:4], (70_000,), *good[5:7], (0,)),  # voltage out of range
        (*good[:7], (1.0,)),  # not an int
    ):
        with pytest.raises(ProtocolError) as info:
            RecordColumns(*bad)  # type: ignore[arg-type]
        assert info.value.local and info.value.code is ErrorCode.INVALID_FIELD
