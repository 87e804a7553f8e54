"""Mutual TLS refusals between a gridwire edge and gridcloud serve, with a log line on each side.

Real certificates from gridcloud.pki, a real CloudService over real TLS on
loopback, a real PostgreSQL for revocation; the edge side checks the server
name with service_identity (optionsForClientTLS), like the gridedge uplink.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from gridcloud import pki, revocation
from gridcloud.server import CloudService
from gridedge import loadgen
from gridedge.uplink.tls import ResumingCreator, session_reused
from gridwire import ErrorCode
from twisted.internet import defer

from support.cloud_harness import CloudPKI, LogCapture, endpoint_of, hello, start_cloud, within
from support.wire_flood import Inflation, count_inflation, flood

# The fixtures cloud_pki, cloud and logs come from tests/support/cloud_fixtures.py; every test
# here watches the log, so an unhandled error logged on either side fails it.
pytestmark = pytest.mark.usefixtures("logs")


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


async def attempt(service: CloudService, tls: ResumingCreator) -> loadgen.EdgeClient:
    """Connect and say Hello; return the client once the connection is closed (refused)."""
    client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
    try:
        await within(reactor(), client.welcome, 10)
    except defer.TimeoutError:
        raise AssertionError("the connection was neither welcomed nor refused") from None
    except Exception:
        await within(reactor(), client.lost, 10)
        return client
    raise AssertionError("the edge was welcomed, but should have been refused")


async def assert_accepted(service: CloudService, tls: ResumingCreator) -> None:
    client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
    await within(reactor(), client.welcome, 10)
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)


@pytest_twisted.ensureDeferred
async def test_the_valid_edge_certificate_is_accepted(
    cloud: CloudService, cloud_pki: CloudPKI
) -> None:
    """Control case: the project CA's edge certificate and the right server name get a Welcome."""
    await assert_accepted(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-ok")))


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_is_refused(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture
) -> None:
    """An edge without a certificate is refused in the handshake; both sides log why."""
    client = await attempt(cloud, cloud_pki.anonymous_tls())
    assert client.errors == []
    await logs.wait_for(reactor(), "refused TLS client", "peer did not return a certificate")
    await logs.wait_for(reactor(), "no session with the cloud", "certificate required")


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_refused(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture
) -> None:
    """An edge certificate signed by a foreign CA is refused; the server names the certificate."""
    stranger = pki.make_ca("someone else's CA")
    client = await attempt(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-x", ca=stranger)))
    assert client.errors == []
    await logs.wait_for(reactor(), "refused TLS client", "not signed by the project CA", "edge-x")
    await logs.wait_for(reactor(), "no session with the cloud", "unknown ca")


@pytest_twisted.ensureDeferred
async def test_expired_certificate_is_refused(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture
) -> None:
    """An edge certificate past its not-after date is refused; both sides say it expired."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    await attempt(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-old", days=10, now=past)))
    await logs.wait_for(reactor(), "refused TLS client", "certificate has expired", "edge-old")
    await logs.wait_for(reactor(), "no session with the cloud", "certificate expired")


@pytest_twisted.ensureDeferred
async def test_revoked_edge_is_refused_despite_a_valid_certificate(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture, pg_dsn: str
) -> None:
    """A revoked edge completes TLS, gets Error(UNAUTHORIZED) and is closed; both sides log it."""
    tls = cloud_pki.client_tls(cloud_pki.edge("edge-r"))
    await assert_accepted(cloud, tls)
    revocation.revoke_edge(pg_dsn, "edge-r", "unit reported stolen")
    client = await attempt(cloud, tls)
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    if client.errors[0].detail == "revoked":
        # On a loaded machine the revocation's NOTIFY can reach the node while this new
        # connection is still being admitted: the listener closes it before admission does.
        await logs.wait_for(reactor(), "edge edge-r", "revoked while connected")
    else:
        assert "unit reported stolen" in client.errors[0].detail
        await logs.wait_for(reactor(), "refused edge edge-r", "edge revoked",
                            "unit reported stolen")
    await logs.wait_for(reactor(), "no session with the cloud", "Error UNAUTHORIZED", "revoked")


@pytest_twisted.ensureDeferred
async def test_revoked_certificate_is_refused_but_a_new_one_works(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture, pg_dsn: str
) -> None:
    """Revoking one certificate serial refuses it; the same edge with a new certificate gets in."""
    old_dir = cloud_pki.edge("edge-k")
    serial = int(pki.load_issued(old_dir / "edge.pem", old_dir / "edge.key").serial)
    revocation.revoke_certificate(pg_dsn, serial, "edge-k", "key leaked")
    client = await attempt(cloud, cloud_pki.client_tls(old_dir))
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    await logs.wait_for(reactor(), "refused edge edge-k", f"serial {serial} revoked")
    await assert_accepted(cloud, cloud_pki.client_tls(cloud_pki.edge("edge-k")))


@pytest_twisted.ensureDeferred
async def test_server_certificate_with_the_wrong_name_is_refused_by_the_edge(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture
) -> None:
    """An edge expecting another host name refuses the server (service_identity); both log it."""
    edge_dir = cloud_pki.edge("edge-n")
    await attempt(cloud, cloud_pki.client_tls(edge_dir, hostname="other.example.org"))
    line = await logs.wait_for(reactor(), "no session with the cloud")
    assert "other.example.org" in line or "VerificationError" in line or "mismatch" in line.lower()
    await logs.wait_for(reactor(), "refused TLS client", "handshake failed")


@pytest_twisted.ensureDeferred
async def test_point11_an_expired_certificate_is_refused_through_tls_resumption(
    cloud_pki: CloudPKI, pg_dsn: str, logs: LogCapture
) -> None:
    """A resumed TLS session skips OpenSSL's certificate check: the certificate that came with
    the session is checked at admission all the same.  The server's clock (a task.Clock) moves
    past the certificate's not-after date between two connections; the second one resumes the
    first one's session and is refused."""
    from twisted.internet import task

    clock = task.Clock()
    clock.advance(reactor().seconds())
    # no partition check while the clock jumps: a query in flight at stop would outlive the test
    year = 365 * 86400.0
    service = await start_cloud(
        reactor(), cloud_pki, pg_dsn, clock=clock, partition_check_interval=year
    )
    try:
        edge_dir = cloud_pki.edge("edge-exp", days=30)
        tls = cloud_pki.client_tls(edge_dir)
        client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello())
        await within(reactor(), client.welcome, 10)
        assert client.resumed is False
        client.transport.loseConnection()
        await within(reactor(), client.lost, 10)

        cert = x509.load_pem_x509_certificate((edge_dir / pki.EDGE_CERT).read_bytes())
        clock.advance(cert.not_valid_after_utc.timestamp() - clock.seconds() + 60)
        again = await attempt(service, tls)
        assert session_reused(again.transport.getHandle())  # OpenSSL checked no certificate
        assert [(e.code, e.detail) for e in again.errors] == [
            (
                ErrorCode.UNAUTHORIZED,
                "certificate expired at " + cert.not_valid_after_utc.isoformat(),
            )
        ]
        await logs.wait_for(reactor(), "refused edge edge-exp", "certificate expired")
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_point11_a_revoked_certificate_is_refused_through_tls_resumption(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture, pg_dsn: str
) -> None:
    """Revocation is checked at every admission, resumed or not."""
    edge_dir = cloud_pki.edge("edge-rr")
    tls = cloud_pki.client_tls(edge_dir)
    await assert_accepted(cloud, tls)
    serial = x509.load_pem_x509_certificate((edge_dir / pki.EDGE_CERT).read_bytes()).serial_number
    revocation.revoke_certificate(pg_dsn, serial, reason="key leaked")
    again = await attempt(cloud, tls)
    assert [e.code for e in again.errors] == [ErrorCode.UNAUTHORIZED]
    await logs.wait_for(reactor(), "refused edge edge-rr", f"serial {serial} revoked")


@pytest_twisted.ensureDeferred
async def test_point10_a_revoked_edge_flooding_batches_costs_no_decoding(
    cloud: CloudService, cloud_pki: CloudPKI, logs: LogCapture, pg_dsn: str, monkeypatch: Any
) -> None:
    """A CA-signed but revoked edge says Hello and floods batches at once over real TLS: it is
    refused, and not one batch is inflated on the server (which runs in this process)."""
    edge_dir = cloud_pki.edge("edge-flood")
    revocation.revoke_edge(pg_dsn, "edge-flood", "stolen")
    inflation = count_inflation(monkeypatch)
    client, _ = await loadgen.connect(
        reactor(), endpoint_of(cloud), cloud_pki.client_tls(edge_dir), hello()
    )
    client.send_raw(flood(200))
    welcomed: list[object] = []
    client.welcome.addCallbacks(welcomed.append, lambda _: None)
    await within(reactor(), client.lost, 10)
    assert welcomed == []
    assert [e.code for e in client.errors] in (
        [ErrorCode.UNEXPECTED_MESSAGE],
        [ErrorCode.UNAUTHORIZED],
    )
    assert inflation == Inflation(0, 0)
