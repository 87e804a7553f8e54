"""What the cloud does with each message an edge sends beyond the connection's core.

An :class:`~gridcloud.connection.EdgeConnection` handles the core of the
protocol itself (Hello, ReadingBatch, EventReport, Ping, Error).  Every other
message type is looked up in a table of handlers, ``{message type: handler}``,
where a handler is ``handler(connection, message)`` and may use the
connection's ``edge_id``, ``peer``, ``log`` and ``send()``.  A type without a
handler is accepted (the session has checked it) and otherwise ignored, which
is Pong's fate (and FirmwareStatus's and ChunkRequest's in a server built
without ``CloudService``).

Why a table: command dispatch and firmware updates each add a handler (here, or
into ``CloudService.handlers`` when it needs the database, as
:mod:`gridcloud.commands` does for ``CommandResult`` and :mod:`gridcloud.firmware`
for ``ChunkRequest`` and ``FirmwareStatus``), not another branch in the
connection or its Twisted adapter.

Tests: tests/cloud/test_cloud_connection.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gridwire import CommandResult, Message

if TYPE_CHECKING:
    from .connection import EdgeConnection, Handler


def log_command_result(connection: EdgeConnection, result: CommandResult) -> None:
    """A server without command delivery (tests) logs results; CloudService stores them."""
    connection.log.info(
        "edge {edge}: command {cid} status {status} {detail}",
        edge=connection.edge_id,
        cid=result.command_id,
        status=result.status,
        detail=result.detail,
    )


def default_handlers() -> dict[type[Message], Handler]:
    """The handler table of a server that nobody extended."""
    return {CommandResult: log_command_result}
