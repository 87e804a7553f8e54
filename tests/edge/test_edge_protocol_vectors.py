"""The edge end plays every conversation of docs/protocol-vectors.json: what it sends is
exactly the bytes there, what it receives decodes to exactly the messages there, and every
malformed frame is refused with the error named there."""

from __future__ import annotations

import json

import pytest

import protocol_vectors

CONVERSATIONS = json.loads(protocol_vectors.PATH.read_text())["conversations"]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=lambda c: c["name"][:40])
def test_plays_conformance_vectors_as_the_edge(conversation: dict[str, object]) -> None:
    """One conversation, played as the edge."""
    protocol_vectors.play(conversation, "edge")
