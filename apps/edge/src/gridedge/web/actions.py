"""What an operator can ask of the unit from the page, and the port it goes through.

Why a Protocol: the page must use the unit's command path (the one cloud commands use, with
its journal of commands and its once-only execution), which is being built apart (issue 12:
a command executor with a local entry point).  The page depends only on :class:`ActionPort`;
:class:`RadioActions` is today's small implementation straight over the radio link and the
uplink, to be replaced by an adapter over the command executor without touching the page.

Every action's Deferred fires with an :class:`Outcome`, never an error.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed

from gridedge.radio import RadioLink, RelayOutcome

from .history import History

__all__ = ["ActionPort", "Outcome", "RadioActions"]


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


class RadioActions:
    """:class:`ActionPort` over the radio link and the uplink as they are today.

    ``link`` and ``uplink`` are looked up at each call (the supervisor may have restarted
    them); each returns None while its part is down.
    """

    def __init__(self, link: Callable[[], RadioLink | None],
                 upload: Callable[[], bool | None], history: History) -> None:
        self._link = link
        self._upload = upload
        self.history = history

    def poll_meter(self, meter_id: int) -> Deferred[Outcome]:
        link = self._link()
        if link is None:
            return succeed(Outcome(False, "radio link down"))
        if link.meter(meter_id) is None:
            return succeed(Outcome(False, "unknown meter"))
        # Today's radio link polls only for records it lacks (docs/radio.md, "Delivery"): a
        # meter with no gap has nothing to fetch, and the page says so.
        state = link.registry.state(meter_id)
        if link.polls.gap(state) is None:
            return succeed(Outcome(True, "up to date: no record missing"))
        link.polls.want(state, link.clock.seconds())
        link.polls.pump()
        self.history.note(meter_id, "poll requested from the page")
        return succeed(Outcome(True, "poll queued"))

    def set_relay(self, meter_id: int, open: bool) -> Deferred[Outcome]:
        link = self._link()
        if link is None:
            return succeed(Outcome(False, "radio link down"))
        if link.meter(meter_id) is None:
            return succeed(Outcome(False, "unknown meter"))
        verb = "open" if open else "close"
        self.history.note(meter_id, f"relay {verb} requested from the page")

        def done(outcome: RelayOutcome) -> Outcome:
            self.history.note(meter_id, f"relay {verb}: {outcome.reason}")
            return Outcome(outcome.ok, outcome.reason)

        return link.relay(meter_id, open).addCallback(done)

    def upload_now(self) -> Deferred[Outcome]:
        sent = self._upload()
        if sent is None:
            return succeed(Outcome(False, "uplink down"))
        if not sent:
            return succeed(Outcome(False, "not connected to the cloud"))
        self.history.note(0, "upload requested from the page")
        return succeed(Outcome(True, "sending"))
