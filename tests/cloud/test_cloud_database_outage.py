"""PostgreSQL stopped and started under a running cloud (a cluster of the test's own, real TLS,
real txpostgres): edges are refused with a retry hint while it is down, the outage is one log
line and its end another, no traceback, and commits resume promptly once it is back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from gridcloud.api.database import Database
from gridcloud.api.feed import FeedHub
from gridcloud.ingest import IngestStore
from gridcloud.server import CloudService
from gridedge import loadgen
from gridedge.uplink.tls import ResumingCreator
from gridwire import ErrorCode
from twisted.internet import threads

import pgcluster
from support.cloud_harness import (
    CloudPKI,
    LogCapture,
    batch,
    endpoint_of,
    hello,
    make_pki,
    sleep,
    start_cloud,
    wait_until,
    within,
)

#: What a commit may take after PostgreSQL accepts connections again (it took seconds).
RESUME_WITHIN = 1.5
#: How long PostgreSQL stays down: the scenario (a restart), not a synchronisation.
OUTAGE = 3.0


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


async def attempt(service: CloudService, tls: ResumingCreator, seq: int) -> loadgen.EdgeClient:
    """One edge connection: Hello and, if welcomed, one batch; returns once it is over."""
    client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
    try:
        await within(reactor(), client.welcome, 10)
        await within(reactor(), client.upload(batch(seq, 10)), 10)
        client.transport.loseConnection()
    except Exception:  # refused or failed: the client's errors say how
        pass
    await within(reactor(), client.lost, 10)
    return client


async def commit_after(service: CloudService, tls: ResumingCreator, seq: int) -> float:
    """Seconds until a new connection gets a batch acknowledged, retrying at once each time."""
    start = time.monotonic()
    while True:
        client = await attempt(service, tls, seq)
        if client.acked >= seq + 9:
            return time.monotonic() - start
        if time.monotonic() - start > 30:
            raise AssertionError(f"no commit 30 s after PostgreSQL came back: {client.errors}")


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Any:
    with pgcluster.temporary_cluster() as cluster:
        port = cluster.port
        monkeypatch.setattr(pgcluster, "free_port", lambda: port)  # back on the same port
        yield cluster


@pytest.mark.parametrize("stop", ["fast", "immediate"])
@pytest_twisted.ensureDeferred
async def test_point6_postgresql_restart_refuses_with_a_hint_and_resumes_promptly(
    tmp_path: Path, cluster: Any, logs: LogCapture, stop: str
) -> None:
    """Down: one line, admissions refused with Error(INTERNAL_ERROR, retry_after >= 1) and no
    query tried; back: one line, and a batch commits within RESUME_WITHIN seconds."""
    test_pki: CloudPKI = make_pki(tmp_path)
    service = await start_cloud(reactor(), test_pki, cluster.dsn(), pool_size=4)
    tls = test_pki.client_tls(test_pki.edge("edge-1"))
    try:
        assert (await attempt(service, tls, 1)).acked == 10
        await threads.deferToThread(cluster.stop, stop)  # the reactor runs meanwhile
        await logs.wait_for(reactor(), "PostgreSQL connection lost")

        refused = await attempt(service, tls, 11)
        assert [e.code for e in refused.errors] == [ErrorCode.INTERNAL_ERROR]
        assert refused.errors[0].retry_after >= 1
        assert "database unavailable" in refused.errors[0].detail

        await sleep(reactor(), OUTAGE)
        await threads.deferToThread(cluster.start)
        resume = await commit_after(service, tls, 11)
        print(f"\nPostgreSQL {stop} stop: first commit {resume:.2f} s after it was back")
        assert resume < RESUME_WITHIN
        await logs.wait_for(reactor(), "PostgreSQL is back after")
        assert len(logs.matching("PostgreSQL connection lost")) == 1
        assert len(logs.matching("PostgreSQL is back")) == 1
        assert not logs.matching("failed: ")  # an empty reason ("failed: ") was logged before
    finally:
        await service.stopService()


async def _listening(kind: str, dsn: str) -> tuple[Any, Any]:
    """(the LISTEN connection, what closes it) of ingest, or of the API's live feed."""
    if kind == "ingest":
        store = IngestStore(reactor(), dsn, 1)
        await store.start()
        await store.listen("anything", lambda _payload: None)
        return store._listeners[0], store.close
    db = Database(reactor(), dsn, 1)
    await db.start()
    hub = FeedHub(db)
    await hub.start()
    return hub._conn, lambda: (hub.stop(), db.close())


@pytest.mark.parametrize("kind", ["ingest", "api-feed"])
@pytest_twisted.ensureDeferred
async def test_a_listener_closed_while_postgresql_is_down_reconnects_no_more(
    cluster: Any, kind: str
) -> None:
    """A LISTEN connection found dead keeps reconnecting until it is closed, and not after:
    txpostgres' own loop went on for ever, its sockets coming and going in the reactor of
    whatever ran next (the test session's shared one)."""
    listener, close = await _listening(kind, cluster.dsn())
    await threads.deferToThread(cluster.stop, "immediate")
    await wait_until(reactor(), lambda: listener.detector.connectionIsDead, "the listener dead")
    attempts: list[object] = []
    connect = listener.connect
    listener.connect = lambda *a, **kw: attempts.append(a) or connect(*a, **kw)
    await wait_until(reactor(), lambda: bool(attempts), "a reconnection attempt")
    close()
    attempts.clear()
    await sleep(reactor(), 3.0)  # txpostgres' loop tries again after 1 s, then 2.7 s
    assert attempts == []
    assert listener not in reactor().getReaders() + reactor().getWriters()
