"""The public surface of gridradio is pinned, typed, documented and sans-IO."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import gridradio
import gridwire
from gridradio._layouts import LAYOUTS, RECORD_FIELDS

PACKAGE = Path(gridradio.__file__).parent

PUBLIC = {
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
}


def test_public_names_are_pinned() -> None:
    """__all__ is exactly the agreed public API and every name in it exists."""
    assert set(gridradio.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(gridradio, name) is not None
    assert gridradio.INTERVAL_SECONDS == 900


def test_the_interval_record_is_gridwires() -> None:
    """One record type end to end: the radio's record is gridwire's, not a copy of it."""
    assert gridradio.IntervalRecord is gridwire.IntervalRecord
    assert gridradio.Flags is gridwire.Flags
    assert tuple(field.name for field in RECORD_FIELDS) == gridwire.IntervalRecord._fields


def test_every_frame_type_has_one_layout_naming_its_fields() -> None:
    """The layout table covers each frame type once, with the frame's fields in order."""
    assert [layout.kind for layout in LAYOUTS] == list(gridradio.FrameType)
    for layout in LAYOUTS:
        names = [field.name for field in dataclasses.fields(layout.frame)]
        assert [part.name for part in layout.parts] == names


def test_package_is_typed_and_modules_point_to_their_tests() -> None:
    """py.typed ships, and every module's docstring names test files that exist."""
    assert (PACKAGE / "py.typed").exists()
    root = PACKAGE.parents[3]
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and "Tests: tests/radio_codec/" in doc, path.name
        tail = doc[doc.index("Tests: ") :]
        for name in {word.strip(",.()") for word in tail.split() if word.startswith("tests/")}:
            assert (root / name).exists(), (path.name, name)


def test_no_io_or_twisted_imports() -> None:
    """gridradio is sans-IO: no sockets, serial ports, threads or Twisted."""
    forbidden = {"socket", "asyncio", "twisted", "threading", "ssl", "selectors", "serial"}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & forbidden, (path.name, names)
