"""The public surface of gridwire is pinned, typed and documented."""

from __future__ import annotations

import ast
from pathlib import Path

import gridwire

PACKAGE = Path(gridwire.__file__).parent

PUBLIC = {
    "MAX_BOOT_SLOT",
    "MAX_CERTIFICATE",
    "MAX_CSR",
    "MAX_FIRMWARE_VERSION",
    "MAX_HANDSHAKE_FRAME",
    "MAX_HANDSHAKE_FRAMES",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "EVENT_TIME_RANGE",
    "VALUE_RANGES",
    "Ack",
    "Allowance",
    "AlarmKind",
    "CertificateIssued",
    "CertificateRequest",
    "ChunkRequest",
    "CloudSession",
    "Command",
    "CommandKind",
    "CommandResult",
    "CommandStatus",
    "EdgeSession",
    "EdgeReferences",
    "ReferenceTable",
    "agreed_references",
    "COMMAND_ACTIONS",
    "Error",
    "ErrorCode",
    "EventReport",
    "FirmwareChunk",
    "FirmwareOffer",
    "FirmwareState",
    "FirmwareStatus",
    "Flags",
    "HealthSummary",
    "Hello",
    "IntervalRecord",
    "Limits",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "ProtocolError",
    "ReadingBatch",
    "RecordColumns",
    "Role",
    "Side",
    "State",
    "Welcome",
    "event_problem",
    "negotiate_version",
    "record_problems",
}


def test_public_names_are_pinned() -> None:
    """__all__ is exactly the agreed public API and every name in it exists."""
    assert set(gridwire.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(gridwire, name) is not None
    assert gridwire.PROTOCOL_VERSION == 3 and list(gridwire.SUPPORTED_VERSIONS) == [1, 2, 3]


def test_package_is_typed() -> None:
    """py.typed ships (tests/test_test_pointers.py checks every module's Tests: line)."""
    assert (PACKAGE / "py.typed").exists()


def test_no_io_or_twisted_imports() -> None:
    """gridwire is sans-IO: it imports neither sockets, asyncio, threads nor Twisted."""
    forbidden = {"socket", "asyncio", "twisted", "threading", "ssl", "selectors"}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & forbidden, (path.name, names)
