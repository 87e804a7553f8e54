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
from gridcloud import pki, revocation
from gridcloud.server import CloudService
from gridedge import loadgen
from gridedge.uplink.tls import ResumingCreator
from gridwire import ErrorCode
from twisted.internet import defer

from support.cloud_harness import CloudPKI, LogCapture, endpoint_of, hello, within

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
    assert "unit reported stolen" in client.errors[0].detail
    await logs.wait_for(reactor(), "refused edge edge-r", "edge revoked", "unit reported stolen")
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
