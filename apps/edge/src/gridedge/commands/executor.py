"""The command executor: accepts commands durably, executes each id once, reports outcomes.

Theory of operation
-------------------
Commands come from two places and take one path:

* the cloud, through the uplink (:meth:`CommandExecutor.accept`): the
  commands of one read from the socket are stored in one transaction
  (:class:`~gridedge.commands.store.CommandStore`), and only then does the
  uplink answer ``CommandResult(ACCEPTED)`` for each;
* the unit's local page (:meth:`CommandExecutor.submit_local`), for operator
  actions: stored the same way under a local id (2^62 and up).

One command runs at a time, oldest first, so a flood of commands cannot flood
the radio.  Before it runs its expiry is checked (expired: not executed, the
outcome says so); then it is marked ``running`` durably and executed (except
``upload_now``, which has no effect outside the unit: such commands, and expired
ones, are finished up to 64 per transaction, so a flood costs few fsyncs):

=============== ==============================================================
relay_open,     ``RadioLink.relay()``; succeeded only when the meter confirmed
relay_close     (the reason otherwise: timeout, no-response, unknown-meter...)
read_now        ``RadioLink.read_now()``: the meter's newest interval, whose
                record goes into the journal like any reading
set_config      whitelisted unit settings saved on the data partition
                (:mod:`gridedge.commands.settings`), checked and applied by
                the unit (``apply_settings``)
reboot          the outcome is reported first, then the unit stops the same way
                as on SIGTERM (journal closed cleanly) and reboots
upload_now      the uplink sends what the journal holds without waiting
set_allowance   the meter's prepaid allowance, handed to the unit's credit
                countdown (:mod:`gridedge.credit`), which may open or close the
                relay through :meth:`CommandExecutor.submit_local`
=============== ==============================================================

The outcome is committed in the store, then journalled as an ``EventReport``
(``COMMAND_SUCCEEDED`` / ``FAILED`` / ``EXPIRED``, detail ``"<id> <action>
<reason>"``): the journal's exactly-once path carries it to the cloud, for local
commands too.  A command interrupted by a crash is never started again: the
store reports it failed at the next start (a relay must not switch twice).

Tests: tests/edge/test_edge_commands.py, tests/system/test_commands_e2e.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gridwire import COMMAND_ACTIONS, AlarmKind, Command, CommandKind
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gridedge.journal import Event, Journal, JournalError
from gridedge.radio import RadioLink

from . import settings
from .store import CommandStore, CommandStoreError, StoredCommand

#: action name -> command kind
KINDS: dict[str, int] = {name: kind for kind, name in COMMAND_ACTIONS.items()}
#: actions aimed at a meter (the others at the unit itself, meter 0)
METER_ACTIONS = frozenset({"relay_open", "relay_close", "read_now"})
#: seconds a local command stays executable when the caller gives no expiry
LOCAL_EXPIRY = 300.0
#: commands looked at, and quick ones finished, per transaction
BATCH = 64

_EVENT_KINDS = {
    "succeeded": AlarmKind.COMMAND_SUCCEEDED,
    "failed": AlarmKind.COMMAND_FAILED,
    "expired": AlarmKind.COMMAND_EXPIRED,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a command ended: ``status`` "succeeded", "failed" or "expired", and why."""

    command_id: int
    action: str
    status: str
    reason: str

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True, slots=True)
class UnitHooks:
    """What the executor asks of the rest of the unit (gridedge.services.Unit fills it in)."""

    #: the radio link while the radio runs, else None
    radio: Callable[[], RadioLink | None]
    #: save and apply settings ("section.key" -> value); returns what was done, raises
    #: ValueError (nothing changed) when the unit's configuration would not accept them
    apply_settings: Callable[[Mapping[str, float]], str]
    #: stop cleanly and reboot (called after the outcome is journalled)
    reboot: Callable[[], None]
    #: upload what the journal holds now; False when there is no connection
    upload_now: Callable[[], bool]
    #: apply a prepaid allowance (meter id, payload); returns what was done, raises
    #: ValueError when refused.  None: this unit does not count prepaid credit
    set_allowance: Callable[[int, bytes], str] | None = None


class CommandExecutor:
    """Accepts, executes and reports commands (see the module docstring)."""

    log = Logger()

    def __init__(self, store: CommandStore, journal: Journal, clock: IReactorTime,
                 hooks: UnitHooks, *, retry_every: float = 30.0) -> None:
        self.store = store
        self.journal = journal
        self.clock = clock
        self.hooks = hooks
        self._retry_every = retry_every
        self._busy = False
        self._again = False
        self._waiters: dict[int, list[defer.Deferred[Outcome]]] = {}
        self._retry: Any = None
        self._reboot_pending = False
        #: commands executed since start (expired ones not included), by action
        self.executed: dict[str, int] = {}

    # -- life cycle (CommandService) ---------------------------------------------------------

    def start(self) -> None:
        self.store.open()
        self.kick()

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.store.close()

    # -- the entry points ----------------------------------------------------------------------

    def accept(self, commands: Sequence[Command]) -> list[int]:
        """Store commands from the cloud durably; returns the ids to answer ACCEPTED.

        Raises :class:`CommandStoreError` when nothing could be stored (the uplink
        then does not answer; the cloud sends them again on the next session).
        A command id already stored is accepted again and not executed again.
        """
        rows = [StoredCommand(c.command_id, int(c.kind), c.meter_id, c.payload,
                              c.expires_at, "cloud") for c in commands]
        new = self.store.accept(rows)
        fresh = sum(new)
        if fresh != len(rows):
            self.log.info("{n} command(s) delivered again: already stored, not repeated",
                          n=len(rows) - fresh)
        # After this call returns: the uplink answers ACCEPTED before any outcome goes up.
        self.clock.callLater(0, self.kick)
        return [c.command_id for c in commands]

    def submit_local(
        self,
        action: str,
        target: int = 0,
        expires_at: float | None = None,
        *,
        config: Mapping[str, float] | None = None,
    ) -> defer.Deferred[Outcome]:
        """Journal and execute a command that starts on the unit (the local page).

        ``action``: "relay_open", "relay_close", "read_now" (``target`` = meter id),
        "set_config" (``config`` = {"uplink.heartbeat": 30, ...}), "reboot" or
        "upload_now" (``target`` 0).  ``expires_at``: Unix seconds (default: in 5 min).
        It is stored durably before this returns, executed exactly like a cloud
        command, and its outcome goes to the cloud as well.  The Deferred fires with the
        :class:`Outcome` (never errbacks); raises ValueError at once for a bad action or
        target, :class:`CommandStoreError` when the store cannot take it.
        """
        if action not in KINDS:
            raise ValueError(f"unknown action {action!r} (one of {', '.join(sorted(KINDS))})")
        if action in METER_ACTIONS:
            if not 0 < target < 1 << 32:
                raise ValueError(f"{action} needs a meter id, not {target!r}")
        elif target != 0:
            raise ValueError(f"{action} is for the unit itself: target must be 0")
        payload = b""
        if action == "set_config":
            payload = settings.json_payload(config or {})
            settings.parse(payload)  # ValueError now rather than a failed outcome later
        elif config is not None:
            raise ValueError("config is only for set_config")
        now = self.clock.seconds()
        expiry = int(expires_at if expires_at is not None else now + LOCAL_EXPIRY)
        command_id = self.store.new_local(KINDS[action], target, payload, expiry)
        d: defer.Deferred[Outcome] = defer.Deferred()
        self._waiters.setdefault(command_id, []).append(d)
        self.log.info("local command {id}: {action} {target}", id=command_id, action=action,
                      target=target)
        self.kick()
        return d

    # -- the run loop --------------------------------------------------------------------------

    def kick(self) -> None:
        """Run what is stored, one at a time (a second kick while busy runs again after)."""
        if self._busy:
            self._again = True
            return
        if not self.store.is_open:
            return
        self._busy = True
        defer.ensureDeferred(self._drain()).addErrback(
            lambda f: self.log.failure("command executor failed", f))

    async def _drain(self) -> None:
        try:
            while self.store.is_open:
                self._again = False
                if not self._report_all():
                    self._retry_later()
                batch = self.store.next_stored(BATCH)
                if not batch:
                    if self._again:
                        continue
                    break
                quick: list[tuple[int, str, str]] = []
                for command in batch:
                    outcome = self._decide(command)
                    if outcome is not None:
                        quick.append(outcome)
                        continue
                    if quick:
                        break  # finish the quick ones first, then this one alone
                    await self._run(command)
                    break
                if quick:
                    self.store.finish_many(quick)
        except (CommandStoreError, JournalError) as exc:
            self.log.warn("commands: {error}; trying again in {s:.0f} s", error=str(exc),
                          s=self._retry_every)
            self._retry_later()
        finally:
            self._busy = False
        if self._reboot_pending:
            self._reboot_pending = False
            self.log.warn("rebooting the unit (reboot command)")
            self.clock.callLater(0, self.hooks.reboot)

    def _retry_later(self) -> None:
        if self._retry is None or not self._retry.active():
            self._retry = self.clock.callLater(self._retry_every, self.kick)

    def _decide(self, command: StoredCommand) -> tuple[int, str, str] | None:
        """The outcome of a command that needs no "running" mark (expired, unknown, or an
        action without effect outside the unit), decided at once; None for the others."""
        action = COMMAND_ACTIONS.get(command.kind)
        if action is None:
            return command.id, "failed", f"unsupported command kind {command.kind}"
        if command.expires_at and self.clock.seconds() >= command.expires_at:
            when = datetime.datetime.fromtimestamp(command.expires_at, datetime.UTC)
            return command.id, "expired", f"expired at {when:%Y-%m-%dT%H:%M:%SZ} before execution"
        if action == "upload_now":
            self.executed[action] = self.executed.get(action, 0) + 1
            if self.hooks.upload_now():
                return command.id, "succeeded", "uploading what the journal holds"
            return command.id, "failed", "not connected to the cloud"
        return None

    async def _run(self, command: StoredCommand) -> None:
        action = COMMAND_ACTIONS[command.kind]
        self.store.start(command.id)  # from here on, never started again
        self.executed[action] = self.executed.get(action, 0) + 1
        try:
            status, reason = await self._execute(action, command)
        except Exception as exc:  # an action's bug must not stop the executor
            self.log.failure("command {id} ({action}) failed", id=command.id, action=action)
            status, reason = "failed", f"error on the unit: {exc}"
        self.store.finish(command.id, status, reason)
        self.log.info("command {id}: {action} meter {meter}: {status} ({reason})",
                      id=command.id, action=action, meter=command.meter_id, status=status,
                      reason=reason)
        if action == "reboot" and status == "succeeded":
            self._reboot_pending = True

    async def _execute(self, action: str, command: StoredCommand) -> tuple[str, str]:
        hooks = self.hooks
        if action in ("relay_open", "relay_close"):
            radio = hooks.radio()
            if radio is None:
                return "failed", "the radio link is not running"
            relay = await radio.relay(command.meter_id, open=action == "relay_open")
            if relay.ok:
                position = "open" if relay.relay_open else "closed"
                return "succeeded", f"meter confirmed: relay {position}"
            return "failed", f"meter did not confirm: {relay.reason} " \
                             f"after {relay.attempts} attempt(s)"
        if action == "read_now":
            radio = hooks.radio()
            if radio is None:
                return "failed", "the radio link is not running"
            read = await radio.read_now(command.meter_id)
            if not read.ok:
                return "failed", f"meter did not answer: {read.reason}"
            if read.interval_end is None:
                return "succeeded", "meter answered; no completed interval yet"
            return "succeeded", f"read: interval ending {read.interval_end}, " \
                                f"{read.energy_wh} Wh"
        if action == "set_config":
            try:
                changes = settings.parse(command.payload)
                return "succeeded", hooks.apply_settings(changes)
            except ValueError as exc:
                return "failed", f"refused: {exc}"
        if action == "reboot":
            return "succeeded", "rebooting after a clean stop"
        if action == "set_allowance":
            if hooks.set_allowance is None:
                return "failed", "this unit does not count prepaid credit"
            try:
                return "succeeded", hooks.set_allowance(command.meter_id, command.payload)
            except ValueError as exc:
                return "failed", f"refused: {exc}"
        return "failed", f"unsupported action {action}"  # upload_now is decided in _decide

    # -- outcomes -----------------------------------------------------------------------------

    def _report_all(self) -> bool:
        """Journal every outcome not yet reported (a few hundred per transaction); False if
        the journal cannot take them now."""
        while True:
            done = self.store.unreported()
            if not done:
                return True
            events = []
            for command in done:
                action = COMMAND_ACTIONS.get(command.kind, f"kind-{command.kind}")
                events.append(Event(command.meter_id, int(self.clock.seconds()),
                                    _EVENT_KINDS[command.status or "failed"],
                                    f"{command.id} {action} {command.reason or ''}".rstrip()))
            try:
                self.journal.append_events(events)
            except JournalError as exc:
                self.log.warn("{n} command outcome(s) not journalled yet: {error}",
                              n=len(events), error=str(exc))
                return False
            self.store.reported([c.id for c in done])
            for command in done:
                waiters = self._waiters.pop(command.id, [])
                if waiters:
                    outcome = Outcome(command.id,
                                      COMMAND_ACTIONS.get(command.kind, f"kind-{command.kind}"),
                                      command.status or "failed", command.reason or "")
                    for d in waiters:
                        d.callback(outcome)

    def waiting(self) -> int:
        """Local callers still waiting for an outcome."""
        return sum(len(ds) for ds in self._waiters.values())


__all__ = ["KINDS", "CommandExecutor", "CommandKind", "Outcome", "UnitHooks"]
