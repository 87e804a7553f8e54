"""The uplink's reconnect policy: exponential until Welcome, long after a refusal, the cloud's
retry hint honoured; and ClientService driven by it on a task.Clock with a real Link whose
cloud refuses it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Journal
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.link import Link, LinkSettings
from gridwire import CloudSession, Error, ErrorCode, Hello
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

LOW: Callable[[], float] = lambda: 0.0  # noqa: E731
HIGH: Callable[[], float] = lambda: 0.999999  # noqa: E731


def policy(rng: Callable[[], float] = LOW) -> ReconnectPolicy:
    return ReconnectPolicy(1.0, 60.0, 2.0, 21600.0, rng=rng)


def test_backoff_is_exponential_jittered_and_capped() -> None:
    """Without Welcome, delays grow by the factor, stay within [d/2, d], never exceed the max."""
    low, high = policy(LOW), policy(HIGH)
    assert [low(1) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert [high(1) for _ in range(3)][-1] == pytest.approx(4.0, rel=1e-5)
    assert max(high(1) for _ in range(30)) <= 60.0
    assert [low(1) for _ in range(30)][-1] == 30.0


def test_point2_only_welcome_resets_the_backoff() -> None:
    """ClientService's attempt number (1 after every TCP connect) does not reset the delays:
    only Welcome does."""
    p = policy()
    assert [p(1) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    p.welcomed()
    assert p(1) == 0.5


def test_point2_refusals_back_off_to_the_maximum_and_revocation_further() -> None:
    """A refused unit waits backoff_max * U(0.5, 1) at once; a revoked one backoff_revoked *
    U(0.5, 1); shutdown and timeout are not refusals."""
    p = policy()
    p.refused(Error(code=ErrorCode.INTERNAL_ERROR, detail="could not store upload"))
    assert p(1) == 30.0
    p.refused(Error(code=ErrorCode.UNAUTHORIZED, detail="revoked"))
    assert p(1) == 10800.0
    p.welcomed()
    p.refused(Error(code=ErrorCode.SHUTTING_DOWN))
    assert p(1) == 0.5
    high = policy(HIGH)
    high.refused(Error(code=ErrorCode.UNAUTHORIZED))
    assert high(1) == pytest.approx(21600.0, rel=1e-5)


def test_point2_retry_hint_is_a_floor_spread_upwards() -> None:
    """Error.retry_after: never sooner than the hint, at most half as long again, and never
    longer than backoff_revoked."""
    low, high = policy(LOW), policy(HIGH)
    for p in (low, high):
        p.refused(Error(code=ErrorCode.INTERNAL_ERROR, retry_after=20))
    assert low(1) == 20.0 and high(1) == pytest.approx(30.0, rel=1e-5)
    low.refused(Error(code=ErrorCode.INTERNAL_ERROR, retry_after=10**9))
    assert low(1) == 21600.0


def test_point2_client_service_waits_as_the_policy_says(tmp_path: Path) -> None:
    """ClientService on a task.Clock, with the real Link of a refused session: after each
    Error it waits backoff_max/2 at least, where before it waited backoff_initial."""
    clock = Clock()
    journal = Journal(tmp_path / "journal.db", max_bytes=1 << 20)
    journal.open()
    up = UplinkConfig(host="cloud.test", port=1, server_name="cloud.test", tls_dir=tmp_path)
    settings = LinkSettings.from_config(EdgeConfig("1.0", "A"), up)
    p = ReconnectPolicy(1.0, 300.0, 2.0, 21600.0, rng=LOW)
    attempts: list[float] = []

    class Refused(Protocol):
        """The edge's protocol with a cloud in memory that answers Hello with an Error."""

        def connectionMade(self) -> None:
            attempts.append(clock.seconds())
            cloud = CloudSession()

            def write(data: bytes) -> None:
                for message in cloud.receive_data(data):
                    if isinstance(message, Hello):
                        clock.callLater(0.2, link.data_received, cloud.send(
                            Error(code=ErrorCode.INTERNAL_ERROR, detail="no")))

            link = Link(journal, settings, clock, write, self.transport.loseConnection,
                        on_error=p.refused, on_ready=lambda _: p.welcomed())
            link.connected()

    class Endpoint:
        """Connects at once to an in-memory transport whose close is seen on the next tick."""

        def connect(self, factory: Factory) -> Any:
            proto = factory.buildProtocol(None)
            transport = StringTransport()

            def lose() -> None:
                clock.callLater(0, proto.connectionLost, Failure(ConnectionError("closed")))

            transport.loseConnection = lose  # type: ignore[method-assign]
            proto.makeConnection(transport)
            return defer.succeed(proto)

    service = ClientService(Endpoint(), Factory.forProtocol(Refused), retryPolicy=p, clock=clock)
    service.startService()
    try:
        clock.advance(0.2)
        for _ in range(5):
            clock.advance(0)
            clock.advance(150.0)
            clock.advance(0.2)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert len(gaps) == 5 and min(gaps) >= 150.0, gaps
    finally:
        service.stopService()
        journal.close()
