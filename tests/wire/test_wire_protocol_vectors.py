"""docs/protocol-vectors.json is what the code makes (no drift), and covers both directions and
the malformed cases; the edge's and the cloud's tests play it (tests/edge, tests/cloud)."""

from __future__ import annotations

import json

import protocol_vectors


def test_vectors_file_is_generated_from_the_code() -> None:
    """The committed file equals a fresh build (run tools/protocol_vectors.py after a change)."""
    assert protocol_vectors.PATH.read_text() == protocol_vectors.text()


def test_vectors_cover_both_directions_and_refusals() -> None:
    """Frames from both roles, every v1 message a unit meets, and refusals on both sides."""
    doc = json.loads(protocol_vectors.PATH.read_text())
    steps = [s for c in doc["conversations"] for s in c["steps"]]
    types = {s["message"]["type"] for s in steps if "message" in s}
    assert {"Hello", "Welcome", "ReadingBatch", "Ack", "EventReport", "Ping", "Pong",
            "Command", "CommandResult"} <= types
    errors = {(s["from"], s["error"]) for s in steps if "error" in s}
    assert {f for f, _ in errors} == {"edge", "cloud"}
    assert {"BAD_BATCH", "FRAME_TOO_LARGE", "UNEXPECTED_MESSAGE", "SEQUENCE_ERROR"} <= {
        e for _, e in errors}
