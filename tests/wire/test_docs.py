"""docs/protocol.md cannot drift: its examples, tables and numbers are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gridwire
import pytest
from gridwire import ErrorCode, Limits, MessageType, ReadingBatch, Role
from gridwire._codec import FrameDecoder, encode_message
from gridwire._messages import MESSAGE_CLASSES
from gridwire._messages import describe as describe_message
from gridwire._state import describe as describe_states

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
NAMESPACE: dict[str, Any] = {name: getattr(gridwire, name) for name in gridwire.__all__}


def examples() -> list[dict[str, str]]:
    """Every ```gridwire-example block as a dict of its 'key: value' lines."""
    blocks = re.findall(r"```gridwire-example\n(.*?)```", DOC, flags=re.DOTALL)
    out = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        out.append(fields)
    return out


EXAMPLES = examples()


def test_doc_has_examples() -> None:
    """The document has worked examples, including two consecutive reading batches."""
    assert len(EXAMPLES) >= 10
    assert any("previous" in example for example in EXAMPLES)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_hex_example_matches_code(index: int) -> None:
    """Each worked example encodes to exactly the hex shown, and the hex decodes back."""
    example = EXAMPLES[index]
    wire = bytes.fromhex(example["hex"])
    previous = None
    if "previous" in example:
        (named,) = [e for e in EXAMPLES if e.get("name") == example["previous"]]
        previous = eval(named["message"], NAMESPACE)
        assert isinstance(previous, ReadingBatch)
    decoder = FrameDecoder(Limits())
    decoder.previous_batch = previous.columns if previous is not None else None
    if "message" in example:
        message = eval(example["message"], NAMESPACE)
        assert encode_message(message, previous=decoder.previous_batch) == wire
        assert decoder.feed(wire) == [message]
    else:
        assert decoder.feed(wire) == [eval(example["decodes"], NAMESPACE)]


def test_message_layout_tables_are_generated_from_the_code() -> None:
    """Every message's field table in the doc is exactly the one generated from its WIRE list."""
    for cls in MESSAGE_CLASSES.values():
        assert describe_message(cls) in DOC, cls.__name__
    for code in MessageType:
        cls = MESSAGE_CLASSES[code]
        assert f"| 0x{code:02X} | {cls.__name__} |" in DOC


def test_state_tables_are_generated_from_the_code() -> None:
    """Both roles' transition tables in the doc equal the ones generated from TRANSITIONS."""
    for role in Role:
        assert describe_states(role) in DOC, role


def test_error_codes_and_limits_are_documented() -> None:
    """Every error code appears with its number, and the default limits are the code's."""
    for code in ErrorCode:
        assert f"| {code.value} | {code.name} |" in DOC
    limits = Limits()
    assert f"| max_frame_size | {limits.max_frame_size} bytes |" in DOC
    assert (
        f"| frames before the handshake | at most {gridwire.MAX_HANDSHAKE_FRAMES} frames "
        f"(skipped ones included) of at most {gridwire.MAX_HANDSHAKE_FRAME} bytes each"
    ) in DOC
    assert f"| max_batch_records | {limits.max_batch_records} |" in DOC


def test_command_kinds_and_unit_events_are_documented() -> None:
    """Every command kind and every unit event (0x8000 up) has its row in the doc's tables."""
    for kind in gridwire.CommandKind:
        assert f"| {kind.value} | {kind.name} |" in DOC, kind
    for alarm in gridwire.AlarmKind:
        if alarm.value >= 0x8000:
            assert f"| 0x{alarm.value:04X} | {alarm.name} |" in DOC, alarm
