"""Prepaid credit on the unit: allowances in, readings counted, the relay opened at zero.

Theory of operation
-------------------
The cloud sends each prepaid meter's allowance as a ``set_allowance`` command
(docs/protocol.md, "SET_ALLOWANCE"); the command executor hands its payload to
:meth:`UnitCredit.set_allowance`.  The radio link's records reach
:meth:`UnitCredit.readings` through :class:`CreditSink` right after the journal
stored them.  The rules of the count are in :mod:`~gridedge.credit.countdown`; this
module keeps the states durable (:class:`~gridedge.credit.store.CreditStore`) and acts:

* a meter whose allowance is used up (or expired) gets its relay opened through the
  command executor, exactly like an operator's local command (``submit_local``: stored,
  executed once, its outcome journalled and shown in the cloud with ``origin: "unit"``),
  and the decision is journalled as ``CREDIT_RELAY_OPENED`` (0x8007);
* a newer allowance that leaves credit closes a relay the unit opened for credit
  (``CREDIT_RELAY_CLOSED``, 0x8008).  A relay opened by anyone else is left alone.

Order of the durable steps for a decision: the state with the pending action is
committed in credit.db, then the command is stored by the executor, then the pending
mark is cleared and the event journalled.  A crash between the first two hands the
action over at the next start (a crash between the last two may hand it over twice:
the second relay command finds the relay where the first left it).  A relay command
that fails (the meter did not confirm) clears the decision, so the next reading of the
meter decides again: a retry every interval while the meter is unreachable.

None of this needs the cloud: it runs the same with the link down for days.

Tests: tests/edge/test_edge_credit.py, tests/system/test_credit_offline.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from gridwire import AlarmKind, Allowance, IntervalRecord, ProtocolError
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gridedge.journal import Event, Journal, JournalError

from .countdown import MeterCredit, apply_allowance, count, wants_open
from .store import CreditStore, CreditStoreError

__all__ = ["CreditSink", "UnitCredit"]


class _Outcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def command_id(self) -> int: ...


#: submit_local("relay_open" | "relay_close", meter_id) -> Deferred[Outcome]
Submit = Callable[[str, int], "defer.Deferred[Any]"]


class UnitCredit:
    """The unit's prepaid allowances and their countdown (see the module docstring)."""

    log = Logger()

    def __init__(self, store: CreditStore, journal: Journal, clock: IReactorTime,
                 submit: Submit) -> None:
        self.store = store
        self.journal = journal
        self.clock = clock
        self.submit = submit
        self.states: dict[int, MeterCredit] = {}
        #: every meter's newest reading seen since start (interval_end, register)
        self.newest: dict[int, tuple[int, int]] = {}
        self._expiry: Any = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open credit.db, hand over decisions a crash left pending, check expiries."""
        self.store.open()
        self.states, pending = self.store.load()
        for meter_id, action in sorted(pending.items()):
            self._hand_over(meter_id, action)
        self._evaluate(list(self.states))

    def stop(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.store.close()

    # -- inputs --------------------------------------------------------------------------------

    def set_allowance(self, meter_id: int, payload: bytes) -> str:
        """Apply an allowance (the ``set_allowance`` command); returns what was done.

        ValueError when the payload is unreadable or the store cannot take it (the
        command then fails; the cloud's next allowance tries again).
        """
        try:
            allowance = Allowance.decode(payload)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from exc
        if not 0 < meter_id < 1 << 32:
            raise ValueError("set_allowance needs a meter id")
        held = self.states.get(meter_id)
        state = apply_allowance(held, meter_id, allowance, self.newest.get(meter_id))
        if state is None:
            assert held is not None
            return (f"generation {allowance.generation} ignored: generation "
                    f"{held.generation} is newer")
        try:
            self._commit([state])
        except CreditStoreError as exc:
            raise ValueError(str(exc)) from exc
        state = self.states[meter_id]
        until = datetime.datetime.fromtimestamp(allowance.valid_until, datetime.UTC)
        return (f"generation {state.generation}: {state.allowance_wh} Wh from the reading "
                f"ending {state.anchor_end}, {state.used_wh} Wh used since, until "
                f"{until:%Y-%m-%dT%H:%M:%SZ}; relay {'open' if state.opened else 'not opened'}"
                f" for credit")

    def readings(self, records: Sequence[IntervalRecord]) -> None:
        """Count journalled records of prepaid meters (the radio link's order: per meter,
        increasing interval_end; late ones add nothing)."""
        changed: dict[int, MeterCredit] = {}
        for record in records:
            meter_id = record.meter_id
            seen = self.newest.get(meter_id)
            if seen is None or record.interval_end > seen[0]:
                self.newest[meter_id] = (record.interval_end, record.energy_wh)
            state = changed.get(meter_id) or self.states.get(meter_id)
            if state is not None:
                changed[meter_id] = count(state, record.interval_end, record.energy_wh)
        if changed:
            try:
                self._commit(list(changed.values()))
            except CreditStoreError as exc:
                self.log.error("prepaid credit: readings not counted: {error}", error=str(exc))

    # -- decisions -----------------------------------------------------------------------------

    def _commit(self, states: list[MeterCredit]) -> None:
        """Store ``states`` with the relay decisions they call for, then act on them."""
        now = self.clock.seconds()
        decided: dict[int, str] = {}
        final = []
        for state in states:
            want = wants_open(state, now)
            if want and not state.opened:
                decided[state.meter_id] = "relay_open"
                state = replace(state, opened=True)
            elif not want and state.opened:
                decided[state.meter_id] = "relay_close"
                state = replace(state, opened=False)
            final.append(state)
        self.store.save(final, decided)
        for state in final:
            self.states[state.meter_id] = state
        for meter_id, action in sorted(decided.items()):
            self._hand_over(meter_id, action)
        self._schedule_expiry()

    def _evaluate(self, meter_ids: list[int]) -> None:
        states = [self.states[m] for m in meter_ids if m in self.states]
        if states:
            try:
                self._commit(states)
            except CreditStoreError as exc:
                self.log.error("prepaid credit: {error}", error=str(exc))

    def _hand_over(self, meter_id: int, action: str) -> None:
        state = self.states[meter_id]
        try:
            d = self.submit(action, meter_id)
        except Exception as exc:  # the command store refused it: decide again later
            self.log.error("prepaid credit: {action} for meter {meter} not stored: {error}",
                           action=action, meter=meter_id, error=str(exc))
            self._undo(meter_id, action)
            return
        self.store.handed_over(meter_id)
        kind = (AlarmKind.CREDIT_RELAY_OPENED if action == "relay_open"
                else AlarmKind.CREDIT_RELAY_CLOSED)
        detail = (f"generation={state.generation} allowance_wh={state.allowance_wh} "
                  f"used_wh={state.used_wh} at={state.last_end} "
                  f"valid_until={state.valid_until}")
        try:
            self.journal.append_events([Event(meter_id, int(self.clock.seconds()), kind,
                                              detail)])
        except JournalError as exc:
            self.log.warn("prepaid credit: event not journalled: {error}", error=str(exc))
        self.log.info("prepaid credit: meter {meter}: {action} ({detail})", meter=meter_id,
                      action=action, detail=detail)
        d.addCallback(self._relay_done, meter_id, action)

    def _relay_done(self, outcome: _Outcome, meter_id: int, action: str) -> None:
        if not outcome.ok:
            self.log.warn("prepaid credit: {action} for meter {meter} failed ({reason}); "
                          "decided again at its next reading", action=action, meter=meter_id,
                          reason=outcome.reason)
            self._undo(meter_id, action)

    def _undo(self, meter_id: int, action: str) -> None:
        """Forget a decision whose command did not happen, so it is taken again."""
        state = self.states.get(meter_id)
        if state is None or state.opened != (action == "relay_open"):
            return
        state = replace(state, opened=not state.opened)
        try:
            self.store.save([state])
        except CreditStoreError as exc:
            self.log.error("prepaid credit: {error}", error=str(exc))
            return
        self.states[meter_id] = state

    def _schedule_expiry(self) -> None:
        """A timer at the earliest expiry of an allowance that still keeps a relay closed."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        waiting = [s.valid_until for s in self.states.values() if not s.opened]
        if waiting:
            delay = max(0.0, min(waiting) - self.clock.seconds())
            self._expiry = self.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        now = self.clock.seconds()
        self._evaluate([m for m, s in self.states.items() if not s.opened and now >= s.valid_until])
        if self._expiry is None:
            self._schedule_expiry()

    def summary(self) -> Mapping[str, int]:
        """For the health report: meters counted, and relays opened for credit."""
        return {"meters": len(self.states),
                "opened": sum(1 for s in self.states.values() if s.opened)}


class CreditSink:
    """A RecordSink in front of another: stores there first, then counts the records.

    The count must never make the radio link's append fail (the records are journalled
    by then): its errors are logged, not raised.
    """

    log = Logger()

    def __init__(self, inner: Any, credit: UnitCredit) -> None:
        self.inner = inner
        self.credit = credit

    def append(self, records: Sequence[IntervalRecord]) -> None:
        self.inner.append(records)
        try:
            self.credit.readings(records)
        except Exception:
            self.log.failure("prepaid credit: counting readings failed")

    def watermarks(self) -> Mapping[int, int]:
        result: Mapping[int, int] = self.inner.watermarks()
        return result
