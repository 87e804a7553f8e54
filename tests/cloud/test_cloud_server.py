"""The cloud server over real TLS on loopback, with real PostgreSQL and a gridwire edge client.

Integration tests: the decisions themselves are unit-tested in test_cloud_connection.py; here
they must hold with the real socket, TLS, txpostgres and NOTIFY.  Every wait is on something
observable (a Deferred, a log line, the reactor's readers, a Ping answered), with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2
import pytest_twisted
from cryptography import x509
from gridcloud import pki, revocation
from gridcloud.connection import EdgeConnection
from gridcloud.server import CloudService
from gridedge import loadgen
from gridedge.uplink.tls import ResumingCreator
from gridwire import ErrorCode, EventReport, Ping, ReadingBatch
from twisted.internet import defer, endpoints, protocol, task, tcp

from support.cloud_harness import (
    CloudPKI,
    LogCapture,
    batch,
    endpoint_of,
    hello,
    query,
    start_cloud,
    wait_until,
    within,
)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


async def connect(service: CloudService, tls: ResumingCreator, **kw: Any) -> loadgen.EdgeClient:
    client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello(**kw))
    return client


def count(dsn: str, sql: str = "SELECT count(*) FROM readings") -> int:
    return int(query(dsn, sql)[0][0])


class EdgeRowLock:
    """Holds the edge's row lock in another transaction: its ingest waits (a slow database)."""

    def __init__(self, dsn: str, edge_id: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.cur = self.conn.cursor()
        self.cur.execute("SELECT 1 FROM edges WHERE edge_id = %s FOR UPDATE", (edge_id,))

    def release(self) -> None:
        self.conn.commit()
        self.conn.close()


def live(service: CloudService, edge_id: str) -> EdgeConnection:
    found = service.sessions.get(edge_id)
    assert found is not None
    return found


def server_socket(client: loadgen.EdgeClient) -> Any:
    """The server's end of ``client``'s TCP connection, found among the reactor's readers."""
    local = client.transport.getHost().port
    found = [
        r for r in reactor().getReaders() if isinstance(r, tcp.Server) and r.getPeer().port == local
    ]
    assert len(found) == 1, found
    return found[0]


async def round_trip(client: loadgen.EdgeClient, nonce: int) -> None:
    """Ping and wait for the Pong: whatever the server sent before it has arrived."""
    client.send(Ping(nonce=nonce))
    await wait_until(reactor(), lambda: nonce in client.pongs, f"Pong {nonce}")


@pytest_twisted.ensureDeferred
async def test_upload_is_acked_after_commit_and_the_edge_resumes_after_it(
    cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """Batches are stored and acked; on reconnection Welcome.last_acked_seq is what was stored."""
    tls = cloud_pki.client_tls(cloud_pki.edge("edge-1"))
    client = await connect(cloud, tls)
    welcome = await within(reactor(), client.welcome, 10)
    assert welcome.last_acked_seq == 0
    assert welcome.heartbeat_interval == cloud.config.heartbeat_interval
    acks = await within(
        reactor(),
        defer.gatherResults([client.upload(batch(1, 100)), client.upload(batch(101, 50))]),
        10,
    )
    assert acks == [100, 150]
    assert count(pg_dsn) == 150
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)

    again = await connect(cloud, tls)
    assert (await within(reactor(), again.welcome, 10)).last_acked_seq == 150
    assert again.resumed is True  # TLS session resumed from the first connection's ticket
    assert await within(reactor(), again.upload(batch(151, 10)), 10) == 160
    assert count(pg_dsn) == 160
    again.transport.loseConnection()
    await within(reactor(), again.lost, 10)


@pytest_twisted.ensureDeferred
async def test_no_ack_before_commit(cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str) -> None:
    """While the transaction cannot commit, no Ack is sent and nothing is visible; then both are."""
    client = await connect(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-1")))
    await within(reactor(), client.welcome, 10)
    lock = EdgeRowLock(pg_dsn, "edge-1")
    try:
        acked = client.upload(batch(1, 20))
        edge = live(cloud, "edge-1")
        await wait_until(reactor(), lambda: edge.pending_uploads == 1, "the upload to arrive")
        await round_trip(client, 1)  # an Ack sent on arrival would have come before the Pong
        assert not acked.called and client.acked == 0
        assert count(pg_dsn) == 0
    finally:
        lock.release()
    assert await within(reactor(), acked, 10) == 20
    assert count(pg_dsn) == 20
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)


@pytest_twisted.ensureDeferred
async def test_slow_database_pauses_reading_the_socket(cloud_pki: CloudPKI, pg_dsn: str) -> None:
    """With PostgreSQL stalled the server stops reading the socket; then resumes and acks all."""
    service = await start_cloud(
        reactor(), cloud_pki, pg_dsn, max_pending_uploads=2, max_in_flight=8
    )
    try:
        client = await connect(service, cloud_pki.client_tls(cloud_pki.edge("edge-1")))
        await within(reactor(), client.welcome, 10)
        edge = live(service, "edge-1")
        tcp = server_socket(client)
        lock = EdgeRowLock(pg_dsn, "edge-1")
        try:
            acks = [client.upload(batch(1 + 500 * i, 500)) for i in range(8)]
            await wait_until(reactor(), lambda: edge.paused, "reading to pause")
            assert tcp not in reactor().getReaders()
            assert 2 <= edge.pending_uploads <= 8
            assert count(pg_dsn) == 0
        finally:
            lock.release()
        done = await within(reactor(), defer.gatherResults(acks), 20)
        assert done == [500 * (i + 1) for i in range(8)]
        assert not edge.paused and tcp in reactor().getReaders()
        assert count(pg_dsn) == 4000
        client.transport.loseConnection()
        await within(reactor(), client.lost, 10)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_new_session_replaces_the_old_one(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture
) -> None:
    """A second connection of an edge becomes the live session; the first is told why and closed."""
    tls = cloud_pki.client_tls(cloud_pki.edge("edge-1"))
    first = await connect(cloud, tls)
    await within(reactor(), first.welcome, 10)
    second = await connect(cloud, tls)
    await within(reactor(), second.welcome, 10)
    await within(reactor(), first.lost, 10)
    assert [e.code for e in first.errors] == [ErrorCode.SHUTTING_DOWN]
    await logs.wait_for(reactor(), "edge edge-1: session from", "replaced by a new one")
    assert len(cloud.sessions) == 1
    assert await within(reactor(), second.upload(batch(1, 5)), 10) == 5
    second.transport.loseConnection()
    await within(reactor(), second.lost, 10)
    assert len(cloud.sessions) == 0


@pytest_twisted.ensureDeferred
async def test_protocol_violation_closes_only_that_connection(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture, pg_dsn: str
) -> None:
    """Garbage from one edge gets it an Error and a closed connection; others are unaffected."""
    good = await connect(cloud, cloud_pki.client_tls(cloud_pki.edge("good")))
    bad = await connect(cloud, cloud_pki.client_tls(cloud_pki.edge("bad")))
    await within(reactor(), defer.gatherResults([good.welcome, bad.welcome]), 10)
    bad.send_raw(b"\xff\xff\xff\xff\xff\xff")
    await within(reactor(), bad.lost, 10)
    assert bad.errors and bad.errors[0].code == ErrorCode.FRAME_TOO_LARGE
    await logs.wait_for(reactor(), "edge bad", "broke the protocol")
    assert await within(reactor(), good.upload(batch(1, 3)), 10) == 3
    await round_trip(good, 77)
    assert good.pongs == [77]
    good.transport.loseConnection()
    await within(reactor(), good.lost, 10)


@pytest_twisted.ensureDeferred
async def test_silent_connection_is_closed_after_the_hello_timeout(
    cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """A TCP peer that never starts TLS is dropped after hello_timeout with a log line."""
    service = await start_cloud(reactor(), cloud_pki, pg_dsn, hello_timeout=0.3)
    try:
        closed: defer.Deferred[None] = defer.Deferred()

        class Silent(protocol.Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                closed.callback(None)

        await endpoints.clientFromString(reactor(), endpoint_of(service)).connect(
            protocol.Factory.forProtocol(Silent)
        )
        await within(reactor(), closed, 5)
        await logs.wait_for(reactor(), "no TLS handshake and Hello")
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_edge_silent_for_three_heartbeats_is_dropped(
    cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """Traffic keeps a session open; 3 heartbeat intervals of silence close it (a NAT ghost)."""
    clock = task.Clock()
    clock.advance(reactor().seconds())  # certificate dates are checked on this clock; t=0 here
    service = await start_cloud(reactor(), cloud_pki, pg_dsn, clock=clock, heartbeat_interval=60)
    try:
        client = await connect(service, cloud_pki.client_tls(cloud_pki.edge("edge-1")))
        assert (await within(reactor(), client.welcome, 10)).heartbeat_interval == 60
        edge = live(service, "edge-1")
        clock.advance(170)
        await round_trip(client, 1)  # heard at t=170: the deadline moves to t=350
        clock.advance(20)  # t=190: the first check finds recent traffic and waits
        assert not edge.closing
        clock.advance(159)  # t=349 (the server's timers run inside advance())
        assert not edge.closing and not client.lost.called
        clock.advance(2)  # t=351
        assert edge.closing
        await within(reactor(), client.lost, 10)
        assert [e.code for e in client.errors] == [ErrorCode.TIMEOUT]
        await logs.wait_for(reactor(), "edge-1", "silent for 3 heartbeat intervals")
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_tls_session_resumes_after_a_cut_connection(
    cloud: CloudService, cloud_pki: CloudPKI
) -> None:
    """A connection cut without TLS close_notify still leaves a session the edge can resume."""
    tls = cloud_pki.client_tls(cloud_pki.edge("edge-1"))
    for expect_resumed in (False, True, True):
        client = await connect(cloud, tls)
        await within(reactor(), client.welcome, 10)
        assert client.resumed is expect_resumed
        await round_trip(client, 1)  # the session tickets follow Welcome
        client.transport.abortConnection()  # a cut: no close_notify either way
        await within(reactor(), client.lost, 10)


@pytest_twisted.ensureDeferred
async def test_revoking_a_connected_edge_closes_its_session(
    cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """Revocation reaches a live session through NOTIFY: another certificate's serial leaves it
    alone, the edge's own certificate or the edge itself closes it at once."""
    edge_dir = cloud_pki.edge("edge-1")
    client = await connect(cloud, cloud_pki.client_tls(edge_dir))
    await within(reactor(), client.welcome, 10)
    revocation.revoke_certificate(pg_dsn, 42, "edge-1", "some older certificate")
    await wait_until(reactor(), lambda: cloud.revocations.handled == 1, "the NOTIFY")
    await round_trip(client, 1)  # still served
    assert not client.lost.called
    revocation.revoke_edge(pg_dsn, "edge-1", "stolen")
    await within(reactor(), client.lost, 10)
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    await logs.wait_for(reactor(), "edge edge-1", "revoked while connected")


@pytest_twisted.ensureDeferred
async def test_point1_poison_records_are_acked_and_the_session_goes_on(
    cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str
) -> None:
    """Over real TLS: records PostgreSQL cannot store (energy 2**63, event time 10**13 and 2**63,
    a NUL in a detail) are acknowledged with the good ones around them, the session stays up,
    the good records are stored and the bad ones are in dead_letters; Welcome tells the edge
    the cloud's batch and frame limits."""
    client = await connect(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-1")))
    welcome = await within(reactor(), client.welcome, 10)
    assert welcome.max_batch_records == cloud.config.max_batch_records
    assert welcome.max_frame_size == cloud.config.max_frame_size
    client.send(EventReport(seq=1, meter_id=3, time=10**13, kind=1, detail="far"))
    client.send(EventReport(seq=2, meter_id=3, time=2**63, kind=1, detail="farther"))
    client.send(EventReport(seq=3, meter_id=3, time=1_700_000_000, kind=1, detail="a\x00b"))
    good = batch(4, 6).records
    poisoned = ReadingBatch(first_seq=4, records=[*good[:3], good[3]._replace(energy_wh=2**63),
                                                  *good[4:]])
    assert await within(reactor(), client.upload(poisoned), 10) == 9
    await round_trip(client, 1)  # still the same, live session
    assert client.errors == [] and not client.lost.called
    assert count(pg_dsn) == 5
    assert query(pg_dsn, "SELECT seq, kind FROM dead_letters ORDER BY seq") == [
        (1, "event"), (2, "event"), (3, "event"), (7, "reading"),
    ]
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)


def certificate_serial(edge_dir: Path) -> int:
    return x509.load_pem_x509_certificate((edge_dir / pki.EDGE_CERT).read_bytes()).serial_number


@pytest_twisted.ensureDeferred
async def test_point9_revoking_a_certificate_by_serial_alone_closes_its_session(
    cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """``gridcloud pki revoke --serial N`` names no edge: the NOTIFY still goes out and the
    live session using that certificate is found by its serial and closed at once."""
    edge_dir = cloud_pki.edge("edge-1")
    client = await connect(cloud, cloud_pki.client_tls(edge_dir))
    await within(reactor(), client.welcome, 10)
    revocation.revoke_certificate(pg_dsn, certificate_serial(edge_dir), reason="key leaked")
    await within(reactor(), client.lost, 10)
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    await logs.wait_for(reactor(), "edge edge-1", "revoked while connected")


@pytest_twisted.ensureDeferred
async def test_point12_a_revocation_while_listen_is_down_still_closes_the_session(
    cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """The LISTEN connection dies (as in a PostgreSQL restart) and the edge is revoked before it
    is back: that NOTIFY reached nobody, so once LISTEN is re-established the server checks its
    sessions against the revocation tables and closes the revoked one.

    Both statements run while the reactor is blocked, so the listener cannot reconnect between
    its death and the revocation's commit."""
    client = await connect(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-1")))
    await within(reactor(), client.welcome, 10)
    (terminated,) = query(
        pg_dsn,
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query = %s",
        (f'LISTEN "{revocation.CHANNEL}"',),
    )
    assert terminated == (True,)
    revocation.revoke_edge(pg_dsn, "edge-1", "stolen")
    await wait_until(reactor(), lambda: cloud.revocations.rechecks == 1, "LISTEN again", 15)
    await within(reactor(), client.lost, 10)
    assert cloud.revocations.handled == 0  # the NOTIFY never arrived: the re-check closed it
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    await logs.wait_for(reactor(), "edge edge-1", "revoked while connected")


@pytest_twisted.ensureDeferred
async def test_point12_a_revocation_between_admission_and_welcome_refuses_the_edge(
    cloud: CloudService, cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """The admission query has read "not revoked" and waits (on the edge's row lock) when the
    certificate is revoked: its NOTIFY arrives before the connection is a live session, and must
    still close it instead of being lost and letting a Welcome through."""
    edge_dir = cloud_pki.edge("edge-1")
    tls = cloud_pki.client_tls(edge_dir)
    first = await connect(cloud, tls)  # the edge's row exists from now on
    await within(reactor(), first.welcome, 10)
    first.transport.loseConnection()
    await within(reactor(), first.lost, 10)

    lock = EdgeRowLock(pg_dsn, "edge-1")
    try:
        client = await connect(cloud, tls)
        peer = f"127.0.0.1:{client.transport.getHost().port}"  # as the server names it
        welcomed: list[object] = []
        client.welcome.addCallbacks(welcomed.append, lambda _: None)
        await wait_until(
            reactor(),
            lambda: (
                query(
                    pg_dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%INSERT INTO edges%%'",
                )
                == [(1,)]
            ),
            "the admission waiting on the row lock",
        )
        revocation.revoke_certificate(pg_dsn, certificate_serial(edge_dir), "edge-1", "leaked")
        await wait_until(reactor(), lambda: cloud.revocations.handled == 1, "the NOTIFY")
    finally:
        lock.release()
    await within(reactor(), client.lost, 10)
    assert welcomed == []
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    # the admission itself went through in the database; its answer came too late to matter
    await logs.wait_for(reactor(), f"edge edge-1 ({peer}) admitted after its connection closed")
    assert query(pg_dsn, "SELECT last_peer FROM edges WHERE edge_id = 'edge-1'") == [(peer,)]
