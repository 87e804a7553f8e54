"""The update agent as a Twisted service of the unit: started once, outliving uplink restarts.

Why a service of its own (not under the supervisor): the agent holds no resource that a
restart would repair, and its state (a download under way, the judgement of a new slot after
a reboot) must not be lost when the uplink reconnects; the uplink only hands it each new
connection (gridedge.uplink.link.FirmwareReceiver).

Tests: tests/edge/test_firmware_agent.py, tests/edge/test_edge_cli.py.
"""

from __future__ import annotations

from twisted.application import service

from gridedge.firmware.agent import Agent

__all__ = ["FirmwareService"]


class FirmwareService(service.Service):
    """Starts the agent (judging a pending update first) and stops its timers."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.agent.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.agent.stop()
