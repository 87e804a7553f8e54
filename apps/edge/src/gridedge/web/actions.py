"""What an operator can ask of the unit from the page, and the port it goes through.

Why a Protocol: the page must use the unit's command path, the one cloud commands use (stored
in the command store before anything happens, executed once, its outcome sent to the cloud as
well), and the page's tests and views need nothing more than these three verbs.
:class:`CommandActions` is that path: an adapter over
:meth:`gridedge.commands.CommandExecutor.submit_local`.

Every action's Deferred fires with an :class:`Outcome`, never an error.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed

from gridedge.commands import CommandExecutor, CommandStoreError
from gridedge.commands import Outcome as CommandOutcome

from .history import History

__all__ = ["ActionPort", "CommandActions", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an action ended: ``ok`` and a short reason for the page ("confirmed", "timeout")."""

    ok: bool
    reason: str


class ActionPort(Protocol):
    """The operator actions the page offers."""

    def poll_meter(self, meter_id: int) -> Deferred[Outcome]: ...

    def set_relay(self, meter_id: int, open: bool) -> Deferred[Outcome]: ...

    def upload_now(self) -> Deferred[Outcome]: ...


class CommandActions:
    """:class:`ActionPort` over the unit's command executor: what an operator does on the page
    is a local command (``origin: "unit"`` in the cloud), executed exactly like a cloud one."""

    def __init__(self, executor: CommandExecutor, history: History) -> None:
        self._executor = executor
        self.history = history

    def poll_meter(self, meter_id: int) -> Deferred[Outcome]:
        return self._submit("read_now", meter_id, f"read now of meter {meter_id}")

    def set_relay(self, meter_id: int, open: bool) -> Deferred[Outcome]:
        action = "relay_open" if open else "relay_close"
        return self._submit(action, meter_id, f"relay {'open' if open else 'close'}")

    def upload_now(self) -> Deferred[Outcome]:
        return self._submit("upload_now", 0, "upload now")

    def _submit(self, action: str, target: int, what: str) -> Deferred[Outcome]:
        try:
            d = self._executor.submit_local(action, target)
        except (ValueError, CommandStoreError) as exc:
            return succeed(Outcome(False, str(exc)))
        self.history.note(target, f"{what} requested from the page")

        def done(outcome: CommandOutcome) -> Outcome:
            self.history.note(target, f"{what}: {outcome.status}, {outcome.reason}")
            return Outcome(outcome.ok, outcome.reason)

        return d.addCallback(done)
