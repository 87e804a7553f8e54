"""Recording in PostgreSQL which edges a ``gridcloud serve`` node holds right now.

Why: the HTTP API (another process, maybe another machine) answers "is this edge
online now?", and PostgreSQL is the only state the processes share.  The
registry of live sessions already knows the two moments that matter (a session
claims its edge once admitted, and is forgotten when its connection ends), so this is that
registry writing them down: ``edges.session_token`` (migration 0005) is set to
a token unique to the session at claim, and cleared at release only if it still
holds that session's token.  A newer session of the same edge on another node
has overwritten the token by then, so an old session ending late never marks a
live edge offline.

The writes go one at a time, in order, over one connection of their own; a
failed write is logged and the next one goes ahead (presence is advisory: the
edge's data path never waits for it).  At stop, the node clears every token it
set.  A node killed outright leaves its edges shown online until they connect
again (to any node), which they do within their reconnect back-off.

Tests: tests/cloud/test_cloud_presence.py, tests/cloud/test_api_feed.py (online while
connected, offline after).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from .pool import QuietConnection, StoppableDetector
from .sessions import Replaceable, SessionRegistry

log = Logger(namespace="gridcloud.presence")

S = TypeVar("S", bound=Replaceable)

_CLAIM = "UPDATE edges SET session_token = %s WHERE edge_id = %s"
_RELEASE = "UPDATE edges SET session_token = NULL WHERE edge_id = %s AND session_token = %s"
_CLEAR_NODE = "UPDATE edges SET session_token = NULL WHERE starts_with(session_token, %s)"


class PresenceRegistry(SessionRegistry[S], service.Service):
    """A SessionRegistry that also records each claim and release in ``edges.session_token``."""

    def __init__(self, reactor: Any, dsn: str) -> None:
        SessionRegistry.__init__(self)
        self._reactor = reactor
        self._dsn = dsn
        #: prefix of every token this node sets: unique per process
        self.node = uuid.uuid4().hex[:12] + "/"
        self._numbers = itertools.count(1)
        self._tokens: dict[int, str] = {}
        self._conn: QuietConnection | None = None
        self._tail: defer.Deferred[Any] = defer.succeed(None)
        self._stopped = False

    def claim(self, edge_id: str, session: S, description: str) -> S | None:
        token = f"{self.node}{next(self._numbers)}"
        self._tokens[id(session)] = token
        self._write(_CLAIM, (token, edge_id))
        return super().claim(edge_id, session, description)

    def forget(self, session: S) -> None:
        token = self._tokens.pop(id(session), None)
        if token is not None and session.edge_id is not None:
            self._write(_RELEASE, (session.edge_id, token))
        super().forget(session)

    def stopService(self) -> defer.Deferred[Any]:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        if self._tokens or self._conn is not None:  # this node may have set some
            self._write(_CLEAR_NODE, (self.node,))
        self._stopped = True  # sessions closing from now on are covered by the line above
        self._tail.addBoth(self._close)
        return self._tail

    def _close(self, _: object) -> None:
        if self._conn is not None:
            self._conn.shut()
            self._conn = None

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        if self._stopped:
            return
        def run(_: object) -> Any:
            return self._connection().addCallback(lambda conn: conn.runOperation(sql, args))

        def failed(failure: Any) -> None:
            log.info("presence not recorded ({why})", why=failure.getErrorMessage())

        self._tail = self._tail.addCallback(run).addErrback(failed)

    def _connection(self) -> defer.Deferred[QuietConnection]:
        if self._conn is not None:
            return defer.succeed(self._conn)
        conn = QuietConnection(self._reactor, detector=StoppableDetector(self._reactor))
        d: defer.Deferred[QuietConnection] = conn.connect(self._dsn)

        def opened(_: object) -> QuietConnection:
            self._conn = conn
            return conn

        return d.addCallback(opened)
