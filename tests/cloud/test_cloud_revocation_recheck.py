"""The re-check of live connections after LISTEN comes back (issue 10, point 12) is retried, not
dropped, when the pool cannot run it yet: the LISTEN connection often reconnects before the pool
has noticed that PostgreSQL is back.  Driven on task.Clock; the real re-check over PostgreSQL is
in tests/cloud/test_cloud_server.py (test_point12_...)."""

from __future__ import annotations

from typing import Any

from gridcloud.connection import StoreUnavailable
from gridcloud.server import RevocationListener
from gridcloud.sessions import SessionRegistry
from twisted.internet import defer
from twisted.internet.task import Clock


class Connection:
    def __init__(self, edge_id: str, serial: int) -> None:
        self.edge_id = edge_id
        self.serial = serial
        self.closed = False

    def replaced(self, by: str) -> None:
        raise AssertionError("not replaced in these tests")

    def revoked(self) -> None:
        self.closed = True


class Store:
    """Answers revoked_among() with the queued outcomes, one per call."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def revoked_among(self, identities: list[tuple[str, int]]) -> defer.Deferred[Any]:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


def listener(store: Store, clock: Clock) -> tuple[RevocationListener, Connection]:
    sessions: SessionRegistry[Any] = SessionRegistry()
    connection = Connection("edge-1", 7)
    sessions.claim("edge-1", connection, "peer")
    part = RevocationListener(store, sessions, clock)  # type: ignore[arg-type]
    part.running = True
    return part, connection


def test_point12_a_recheck_during_an_outage_runs_again_after_the_pools_hint() -> None:
    clock = Clock()
    store = Store(StoreUnavailable("database unavailable (down)", 5), {("edge-1", 7)})
    part, connection = listener(store, clock)
    part.recheck()
    assert store.calls == 1 and not connection.closed and part.rechecks == 0
    clock.advance(4.9)
    assert store.calls == 1
    clock.advance(0.1)
    assert store.calls == 2 and connection.closed and part.rechecks == 1


def test_point12_other_recheck_failures_back_off_and_a_new_listen_replaces_the_retry() -> None:
    clock = Clock()
    store = Store(RuntimeError("boom"), RuntimeError("boom"), set(), set())
    part, connection = listener(store, clock)
    part.recheck()
    clock.advance(RevocationListener.RETRY_FIRST)
    assert store.calls == 2  # the second failure doubles the delay
    clock.advance(RevocationListener.RETRY_FIRST * 2 - 0.1)
    assert store.calls == 2
    part.recheck()  # LISTEN came back again meanwhile: that check replaces the pending one
    assert store.calls == 3 and clock.getDelayedCalls() == []
    assert not connection.closed and part.rechecks == 1


def test_point12_no_retry_is_left_behind_after_stop() -> None:
    clock = Clock()
    store = Store(StoreUnavailable("database unavailable (down)", 5))
    part, _ = listener(store, clock)
    part.recheck()
    assert len(clock.getDelayedCalls()) == 1
    part.stopService()
    assert clock.getDelayedCalls() == []
