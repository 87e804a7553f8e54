"""docs/radio.md cannot drift: its byte tables and worked examples are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gridradio
import pytest
from gridradio import MAX_POLL_COUNT, MAX_STUFFED, FrameDecoder, FrameType, encode
from gridradio._layouts import (
    LAYOUTS,
    RECORD_SIZE,
    Field,
    describe_frames,
    describe_record,
    describe_values,
    size,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "radio.md").read_text()
NAMESPACE: dict[str, Any] = {name: getattr(gridradio, name) for name in gridradio.__all__}


def examples() -> list[tuple[str, str]]:
    """Every ```radio-example block as (frame expression, hex bytes on the wire)."""
    out = []
    for block in re.findall(r"```radio-example\n(.*?)```", DOC, re.S):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        out.append((lines[0], "".join(lines[1:])))
    return out


@pytest.mark.parametrize(
    "table", [describe_record, describe_frames, describe_values], ids=lambda f: f.__name__
)
def test_tables_are_generated_from_the_layouts(table: Any) -> None:
    """Each byte table in the doc is exactly the one generated from gridradio's layout table
    (on failure, paste the generated table shown here into docs/radio.md)."""
    generated = table()
    assert generated in DOC, f"docs/radio.md lacks this table:\n{generated}"


def test_sizes_in_the_prose_are_the_codes() -> None:
    """The record size, the longest body and the stuffing bound quoted in the text are right."""
    (response,) = [layout for layout in LAYOUTS if layout.kind is FrameType.POLL_RESPONSE]
    head = size(tuple(part for part in response.parts if isinstance(part, Field))) + 1  # + n
    longest = head + MAX_POLL_COUNT * RECORD_SIZE
    assert f"{RECORD_SIZE}-byte `RECORD`" in DOC
    assert f"body (0..{longest} bytes)" in DOC
    assert f"longer than {MAX_STUFFED} bytes (stuffed)" in DOC


def test_docs_have_an_example_of_every_frame_type() -> None:
    """docs/radio.md has a worked example for every frame type."""
    kinds = {eval(expr, NAMESPACE).TYPE for expr, _ in examples()}
    assert kinds == set(FrameType)


@pytest.mark.parametrize(("expr", "wire"), examples())
def test_doc_example(expr: str, wire: str) -> None:
    """The bytes shown in docs/radio.md are exactly what the codec produces and accepts."""
    frame = eval(expr, NAMESPACE)
    data = bytes.fromhex(wire)
    assert encode(frame).hex(" ") == data.hex(" ")
    assert FrameDecoder().feed(data) == [frame]
