"""The SET_ALLOWANCE payload (gridwire.Allowance): round trip, documented example, refusals."""

from __future__ import annotations

import pytest
from gridwire import COMMAND_ACTIONS, AlarmKind, Allowance, CommandKind, ErrorCode, ProtocolError
from hypothesis import given
from hypothesis import strategies as st

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@given(U64, U64, U64, U64, U64)
def test_round_trip(g: int, wh: int, end: int, reg: int, valid: int) -> None:
    a = Allowance(generation=g, allowance_wh=wh, anchor_end=end, anchor_wh=reg, valid_until=valid)
    assert Allowance.decode(a.encode()) == a


def test_documented_example_and_size() -> None:
    """The bytes docs/protocol.md shows; about 20 bytes for realistic values."""
    a = Allowance(generation=1201, allowance_wh=5321, anchor_end=1764806400,
                  anchor_wh=1234567, valid_until=1765065600)
    assert a.encode().hex(" ") == "b1 09 c9 29 80 9e c3 c9 06 87 ad 4b 80 87 d3 c9 06"
    assert len(a.encode()) == 17
    assert Allowance.decode(a.encode() + b"\x05") == a  # later fields are ignored


@pytest.mark.parametrize(
    "payload", [b"", b"\x01\x02\x03\x04", b"\x01\x80", b"\x01\x80\x00\x01\x01\x01"])
def test_truncated_or_non_minimal_is_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        Allowance.decode(payload)
    assert info.value.code is ErrorCode.INVALID_FIELD


def test_codes() -> None:
    assert CommandKind.SET_ALLOWANCE == 9 and COMMAND_ACTIONS[9] == "set_allowance"
    assert AlarmKind.CREDIT_RELAY_OPENED == 0x8007 and AlarmKind.CREDIT_RELAY_CLOSED == 0x8008
    with pytest.raises(ProtocolError):
        Allowance(generation=-1, allowance_wh=0, anchor_end=0, anchor_wh=0, valid_until=0)
