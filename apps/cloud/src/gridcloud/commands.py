"""Command delivery in ``gridcloud serve``: from the ``commands`` table to the unit's session.

Theory of operation
-------------------
PostgreSQL holds every command (migration 0007); this node holds sessions.  A
command reaches a unit in one of two ways:

* Woken: ``POST /v1/commands`` (any API process) inserts the row, whose trigger
  sends ``NOTIFY gridcloud_commands, '<edge id>'``.  Every serve node LISTENs;
  the one whose :class:`~gridcloud.sessions.SessionRegistry` holds that edge's
  live session pumps it at once.  Other nodes ignore the notice.
* On Hello: when a connection becomes its edge's live session, it is pumped, so
  what was created while the unit was offline (or was sent to a session that
  died before the unit accepted it) goes now.

Pumping a session claims up to ``command_window`` minus what is in flight of
the edge's ``queued`` or ``sent`` commands, oldest first, in one ``UPDATE ...
RETURNING`` (a command past its expiry turns ``expired`` there instead of being
sent), and sends each as a ``Command``.  The unit stores it durably and answers
``CommandResult(ACCEPTED)``; the acceptances of a session are written in one
statement at a time (``acknowledged``), and only then leave the window, so a
command is never sent twice to one session while its acceptance is being
written.  So one session has at most ``command_window`` unaccepted commands out:
a flood of commands is paced by the unit's acceptances and never crowds the
readings' acknowledgements out of the connection.

The final outcome does not pass through here: the unit journals it as an
``EventReport`` (kinds ``COMMAND_*``), which ingest stores with the command's
new state in one transaction (``apply_command_outcome()`` in migration 0007).
An older unit that answers a command with a final ``CommandResult`` (e.g.
``UNSUPPORTED``) has it recorded here as the outcome.

A sweep every ``command_expiry_interval`` seconds marks ``expired`` what was
never accepted and whose expiry passed (a unit offline for too long).  If the
unit had in fact stored it, its own outcome (its clock decides) replaces the guess.

Tests: tests/cloud/test_cloud_commands.py, tests/system/test_commands_e2e.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gridwire import (
    COMMAND_ACTIONS,
    Allowance,
    Command,
    CommandResult,
    CommandStatus,
    ProtocolError,
    State,
)
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from .connection import EdgeConnection
from .pool import Database
from .sessions import SessionRegistry

log = Logger(namespace="gridcloud.commands")

CHANNEL = "gridcloud_commands"

#: action name -> Command.kind
KINDS: dict[str, int] = {name: kind for kind, name in COMMAND_ACTIONS.items()}

CLAIM_SQL = """
UPDATE commands c
   SET state = CASE WHEN c.expires_at <= now() THEN 'expired' ELSE 'sent' END,
       sent_at = CASE WHEN c.expires_at <= now() THEN c.sent_at ELSE now() END,
       expired_at = CASE WHEN c.expires_at <= now() THEN now() END,
       reason = CASE WHEN c.expires_at <= now() THEN 'expired before delivery' END,
       deliveries = c.deliveries + CASE WHEN c.expires_at <= now() THEN 0 ELSE 1 END,
       updated_at = now()
 WHERE c.id IN (SELECT id FROM commands
                 WHERE edge_id = %(edge)s AND state IN ('queued', 'sent')
                   AND NOT (id = ANY(%(out)s::bigint[]))
                 ORDER BY id LIMIT %(limit)s
                   FOR UPDATE SKIP LOCKED)
RETURNING c.id, c.action, coalesce(c.meter_id, 0), c.params::text,
          extract(epoch FROM c.expires_at)::bigint, c.state
"""

ACCEPT_SQL = """
UPDATE commands
   SET state = 'acknowledged', acknowledged_at = now(), updated_at = now()
 WHERE edge_id = %(edge)s AND id = ANY(%(ids)s::bigint[]) AND state IN ('queued', 'sent')
RETURNING id
"""

FINAL_SQL = """
UPDATE commands
   SET state = %(state)s, reason = %(reason)s, updated_at = now(),
       acknowledged_at = coalesce(acknowledged_at, now()),
       succeeded_at = CASE WHEN %(state)s = 'succeeded' THEN now() END,
       failed_at = CASE WHEN %(state)s = 'failed' THEN now() END
 WHERE edge_id = %(edge)s AND id = %(id)s AND state IN ('queued', 'sent', 'acknowledged')
RETURNING id
"""

EXPIRE_SQL = """
UPDATE commands
   SET state = 'expired', expired_at = now(), updated_at = now(),
       reason = 'expired before the unit accepted it'
 WHERE state IN ('queued', 'sent') AND expires_at <= now()
RETURNING id
"""


@dataclass(slots=True, eq=False)
class _Delivery:
    """One live session's commands: sent and not yet accepted, acceptances to write."""

    connection: EdgeConnection
    out: set[int] = field(default_factory=set)
    accepted: list[int] = field(default_factory=list)
    claiming: bool = False
    writing: bool = False
    again: bool = False


class CommandDispatcher(service.Service):
    """Delivers commands to the live sessions of this node (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        sessions: SessionRegistry[EdgeConnection],
        clock: Any,
        *,
        window: int = 32,
        expiry_interval: float = 30.0,
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._clock = clock
        self.window = window
        self._deliveries: dict[EdgeConnection, _Delivery] = {}
        self._sweep = task.LoopingCall(self.expire)
        self._sweep.clock = clock
        self._expiry_interval = expiry_interval
        self.ready: defer.Deferred[Any] = defer.succeed(None)
        #: commands sent so far (re-sends included), for tests and logs
        self.sent = 0

    # -- life cycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready = defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await self._db.listen(CHANNEL, self.wake, self._recovered)
        if self.running:
            self._sweep.start(self._expiry_interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._sweep.running:
            self._sweep.stop()
        self._deliveries.clear()

    def _recovered(self) -> defer.Deferred[None]:
        """LISTEN is back after an outage: notices may be lost, so look for every session."""
        for delivery in list(self._deliveries.values()):
            self._pump(delivery)
        return defer.succeed(None)

    # -- the connection's observer (gridcloud.connection.SessionObserver) ---------------------

    def live(self, connection: EdgeConnection) -> None:
        delivery = self._deliveries.setdefault(connection, _Delivery(connection))
        self._pump(delivery)

    def gone(self, connection: EdgeConnection) -> None:
        self._deliveries.pop(connection, None)

    # -- wake-ups -----------------------------------------------------------------------------

    def wake(self, edge_id: str) -> None:
        """NOTIFY: ``edge_id`` has new commands; send them if this node holds its session."""
        connection = self._sessions.get(edge_id)
        if connection is None:
            return
        delivery = self._deliveries.get(connection)
        if delivery is not None:
            self._pump(delivery)

    def expire(self) -> defer.Deferred[None]:
        """Mark expired the commands no unit accepted before their expiry."""

        def failed(failure: Failure) -> None:
            log.warn("expiring commands failed (next sweep retries): {why}",
                     why=failure.getErrorMessage())

        d = self._db.run(EXPIRE_SQL)
        result: defer.Deferred[None] = d.addCallbacks(lambda rows: None, failed)
        return result

    # -- sending ------------------------------------------------------------------------------

    def _usable(self, delivery: _Delivery) -> bool:
        c = delivery.connection
        return (self._deliveries.get(c) is delivery and c.live
                and c.session.state is State.READY)

    def _pump(self, delivery: _Delivery) -> None:
        """Claim and send what fits in the window; one claim at a time per session."""
        if not self._usable(delivery):
            return
        if delivery.claiming:
            delivery.again = True
            return
        room = self.window - len(delivery.out)
        if room <= 0:
            return
        delivery.claiming = True
        delivery.again = False
        edge_id = delivery.connection.edge_id
        d = self._db.run(CLAIM_SQL, {"edge": edge_id, "out": sorted(delivery.out),
                                     "limit": room})
        d.addCallbacks(lambda rows: self._claimed(delivery, rows, room),
                       lambda failure: self._claim_failed(delivery, failure))

    def _claimed(self, delivery: _Delivery, rows: list[tuple[Any, ...]], room: int) -> None:
        delivery.claiming = False
        if not self._usable(delivery):
            return  # the rows stay 'sent': the unit's next session gets them
        connection = delivery.connection
        for command_id, action, meter_id, params, expires_at, state in sorted(rows):
            if state != "sent":
                continue
            kind = KINDS[action]
            payload = command_payload(action, params)
            try:
                connection.send(Command(command_id=command_id, kind=kind, meter_id=meter_id,
                                        payload=payload, expires_at=max(0, expires_at)))
            except ProtocolError as exc:  # a payload over the wire's bound cannot be sent
                log.error("edge {edge}: command {id} cannot be sent: {why}",
                          edge=connection.edge_id, id=command_id, why=str(exc))
                self._final(connection.edge_id, command_id, "failed", f"not sendable: {exc}")
                continue
            delivery.out.add(command_id)
            self.sent += 1
        if delivery.again or len(rows) >= room:
            self._pump(delivery)

    def _claim_failed(self, delivery: _Delivery, failure: Failure) -> None:
        delivery.claiming = False
        # Nothing is lost: the commands stay queued for the next wake-up or session.
        log.warn("edge {edge}: claiming commands failed: {why}",
                 edge=delivery.connection.edge_id, why=failure.getErrorMessage())

    # -- results ------------------------------------------------------------------------------

    def result(self, connection: EdgeConnection, result: CommandResult) -> None:
        """A CommandResult from the unit: ACCEPTED (stored durably), or an older unit's
        final answer."""
        delivery = self._deliveries.get(connection)
        if result.status == CommandStatus.ACCEPTED:
            if delivery is None:
                return  # not live any more: the next session repeats it
            delivery.accepted.append(result.command_id)
            self._write_accepted(delivery)
            return
        state = "succeeded" if result.status == CommandStatus.OK else "failed"
        status = getattr(result.status, "name", str(result.status))
        reason = result.detail if state == "succeeded" else f"{status}: {result.detail}"
        self._final(connection.edge_id, result.command_id, state, reason)
        if delivery is not None:
            delivery.out.discard(result.command_id)
            self._pump(delivery)

    def _write_accepted(self, delivery: _Delivery) -> None:
        if delivery.writing or not delivery.accepted:
            return
        ids, delivery.accepted = delivery.accepted, []
        delivery.writing = True

        def written(_: object) -> None:
            delivery.writing = False
            delivery.out.difference_update(ids)
            self._write_accepted(delivery)
            self._pump(delivery)

        def failed(failure: Failure) -> None:
            delivery.writing = False
            # The ids stay "out" for this session (never re-sent to it); the next session
            # sends them again and the unit answers ACCEPTED again.
            log.warn("edge {edge}: recording accepted commands failed: {why}",
                     edge=delivery.connection.edge_id, why=failure.getErrorMessage())

        self._db.run(ACCEPT_SQL,
                     {"edge": delivery.connection.edge_id, "ids": ids}
                     ).addCallbacks(written, failed)

    def _final(self, edge_id: str | None, command_id: int, state: str, reason: str) -> None:
        params = {"edge": edge_id, "id": command_id, "state": state, "reason": reason[:500]}
        self._db.run(FINAL_SQL, params).addErrback(
            lambda failure: log.warn("edge {edge}: recording command {id} failed: {why}",
                                     edge=edge_id, id=command_id,
                                     why=failure.getErrorMessage()))


def command_payload(action: str, params: str | None) -> bytes:
    """A command's payload from its ``params`` (jsonb as text): set_config's JSON as it is,
    set_allowance's fields as the compact binary ``gridwire.Allowance`` (metered links)."""
    if params in (None, "{}"):
        return b""
    assert params is not None
    if action == "set_allowance":
        return Allowance(**json.loads(params)).encode()
    return params.encode()
