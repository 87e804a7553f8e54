"""The committed corpus of malformed inputs: each file raises exactly the error its name says."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridwire import (
    CloudSession,
    EdgeSession,
    ErrorCode,
    Hello,
    Limits,
    Message,
    ProtocolError,
)
from gridwire._codec import FrameDecoder

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(CORPUS.glob("*.bin"))


def receiver(target: str) -> FrameDecoder | EdgeSession | CloudSession:
    if target == "frame":
        return FrameDecoder(Limits())
    if target == "cloud":
        return CloudSession()
    edge = EdgeSession()
    edge.send(Hello(min_version=1, max_version=1, firmware_version="1", boot_slot="A"))
    return edge


def feed(target: str, chunks: list[bytes]) -> list[Message]:
    side = receiver(target)
    out: list[Message] = []
    for chunk in chunks:
        out += side.feed(chunk) if isinstance(side, FrameDecoder) else side.receive_data(chunk)
    return out


def test_corpus_is_there() -> None:
    """The corpus exists and covers frames, both session roles and every decoding error code."""
    assert len(FILES) >= 40
    targets = {path.name.split(".")[0] for path in FILES}
    codes = {path.name.split(".")[1] for path in FILES}
    assert targets == {"frame", "cloud", "edge"}
    for code in (
        "MALFORMED_FRAME",
        "FRAME_TOO_LARGE",
        "UNKNOWN_MESSAGE",
        "UNSUPPORTED_EXTENSION",
        "INVALID_FIELD",
        "BAD_BATCH",
        "BATCH_TOO_LARGE",
        "UNEXPECTED_MESSAGE",
        "UNSUPPORTED_VERSION",
        "SEQUENCE_ERROR",
    ):
        assert code in codes


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_file_raises_its_error(path: Path) -> None:
    """Fed whole and one byte at a time, the file raises a remote ProtocolError with its code."""
    target, code_name, _ = path.name.split(".", 2)
    expected = ErrorCode[code_name]
    data = path.read_bytes()
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        with pytest.raises(ProtocolError) as info:
            feed(target, chunks)
        assert info.value.code is expected, (chunks is not None, info.value)
        assert info.value.remote
