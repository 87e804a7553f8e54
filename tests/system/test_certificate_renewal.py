"""Renewal of a unit's certificate over gridwire, end to end, with the link cut at every step.

Real parts: certificates from gridcloud.pki (project CA, online issuing CA, a unit
certificate minutes from expiry), a CloudService (what `gridcloud serve` runs) over
PostgreSQL, real mutual TLS on loopback, and the unit's own UplinkService with its
journal and its tls/ folder on disk.  The cuts are made by the cloud at exact
moments (its handler table and its admission are wrapped), so each step is hit for
sure, not by luck of timing:

1. the request is lost before the cloud handles it;
2. the cloud signs and records it, but the answer is lost;
3. the unit stores the answer, then restarts before switching (a new UplinkService
   over the same files);
4. the first connection with the new certificate is cut before admission;
5. a later one is cut after admission confirmed the renewal (and revoked the old
   serial) but before the Welcome reached the unit.

Throughout, readings are journalled and must each reach PostgreSQL exactly once,
and the unit always holds a certificate the cloud accepts.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from gridcloud import pki
from gridcloud.connection import EdgeConnection, EdgeInfo
from gridcloud.server import CloudService
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Journal
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.certstore import RENEWAL_KEY, RENEWED_CERT, CertificateStore
from gridedge.uplink.link import LinkSettings
from gridedge.uplink.renewal import Renewal, RenewalSettings
from gridedge.uplink.service import UplinkService
from gridedge.uplink.traffic import Traffic
from gridwire import CertificateRequest, ErrorCode

from support.cloud_harness import (
    SERVER_NAME,
    CloudPKI,
    LogCapture,
    endpoint_of,
    hello,
    make_pki,
    query,
    records,
    start_cloud,
    wait_until,
    within,
)

pytestmark = pytest.mark.usefixtures("logs")

EDGE_ID = "edge-renew-1"
#: The renewed certificate lives this long; the unit renews when less than RENEW_BEFORE is left.
RENEWED_DAYS = 900 / 86400
RENEW_BEFORE = 600.0


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def unit_tls(test_pki: CloudPKI, folder: Path) -> pki.Issued:
    """The unit's tls/ folder with a project-CA certificate that expires in about 5 minutes."""
    now = datetime.datetime.now(datetime.UTC)
    issued = pki.issue_edge(test_pki.ca, EDGE_ID, days=10 / 1440, now=now)  # 10 min - 5 skew
    folder.mkdir(parents=True)
    pki.write_private_key(folder / pki.EDGE_KEY, issued)
    pki.write_certificate(folder / pki.EDGE_CERT, issued.cert_pem())
    pki.write_certificate(folder / pki.CA_CERT, test_pki.ca.cert_pem())
    return issued


def make_uplink(journal: Journal, tls: Path, service: CloudService) -> UplinkService:
    config = UplinkConfig(host="127.0.0.1", port=service.port.getHost().port,
                          server_name=SERVER_NAME, tls_dir=tls, batch_linger=0.0,
                          batch_records=100, upload_deadline=0.0, backoff_revoked=3600.0)
    store = CertificateStore(tls)
    return UplinkService(
        reactor(), journal, Traffic(journal.path), host=config.host, port=config.port,
        server_name=config.server_name, identity_loader=store.current,
        settings=LinkSettings.from_config(EdgeConfig("1.0", "A"), config),
        backoff=ReconnectPolicy(0.05, 0.2, 2.0, config.backoff_revoked),
        connect_timeout=config.connect_timeout,
        renewal=Renewal(store, RenewalSettings(renew_before=RENEW_BEFORE)),
    )


class Cuts:
    """The cloud's side of the test: its renewal handler and admission, with cuts on demand."""

    def __init__(self, service: CloudService) -> None:
        self.service = service
        self.requests: list[str] = []  # what each CertificateRequest met
        self.plan: list[str] = []  # "drop", "sign-then-cut", "pass" for the next requests
        self.admissions: list[tuple[int, str]] = []  # (serial, what happened)
        self.admit_plan: dict[int, list[str]] = {}  # serial -> "cut-before", "cut-after", "pass"
        handler = service.handlers[CertificateRequest]
        service.handlers[CertificateRequest] = self._request
        self._handler = handler
        store = service._database
        self._admit = store.admit
        store.admit = self._admission  # type: ignore[method-assign]

    def cut(self) -> None:
        self.service.listener.factory.abort_all()

    def _request(self, connection: EdgeConnection, message: CertificateRequest) -> None:
        step = self.plan.pop(0) if self.plan else "pass"
        self.requests.append(step)
        if step == "drop":
            self.cut()
            return
        self._handler(connection, message)
        if step == "sign-then-cut":  # the answer comes after a database round trip: lost
            self.cut()

    def _admission(self, info: EdgeInfo, done: Callable[[int], None],
                   failed: Callable[[BaseException], None]) -> None:
        plan = self.admit_plan.get(info.serial) or []
        step = plan.pop(0) if plan else "pass"
        self.admissions.append((info.serial, step))
        if step == "cut-before":
            self.cut()
            return
        if step == "cut-after":  # committed (renewal confirmed), Welcome never sent
            self._admit(info, lambda last_seq: self.cut(), failed)
            return
        self._admit(info, done, failed)


def stored(dsn: str) -> tuple[int, int]:
    rows = query(dsn, "SELECT count(*), count(DISTINCT seq) FROM readings WHERE edge_id = %s",
                 (EDGE_ID,))
    return int(rows[0][0]), int(rows[0][1])


def revoked(dsn: str, serial: int) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT reason FROM revoked_certificates WHERE serial = %s", (serial,))


@pytest_twisted.ensureDeferred
async def test_renewal_survives_a_cut_at_every_step(
    tmp_path: Path, pg_dsn: str, logs: LogCapture
) -> None:
    """The unit renews its certificate over the link although the link is cut at each step;
    no reading is lost or doubled, the unit always has a certificate the cloud accepts, and
    the old serial is revoked once the new one has worked."""
    test_pki = make_pki(tmp_path)
    test_pki.folder.issuing_ca()
    folder = test_pki.folder.path
    service = await start_cloud(
        reactor(), test_pki, pg_dsn, issuing_ca_cert=folder / pki.ISSUING_CERT,
        issuing_ca_key=folder / pki.ISSUING_KEY, certificate_days=RENEWED_DAYS)
    cuts = Cuts(service)
    tls = tmp_path / "unit" / "tls"
    old = unit_tls(test_pki, tls)
    old_copy = tmp_path / "old-tls"
    shutil.copytree(tls, old_copy)
    journal = Journal(tmp_path / "unit" / "journal.db", max_bytes=10 << 20)
    journal.open()
    appended = 0

    def journal_some(count: int = 40) -> None:
        nonlocal appended
        journal.append(records(count, first_meter=1000 + appended))
        appended += count

    cuts.plan = ["drop", "sign-then-cut", "pass"]
    journal_some()
    uplink = make_uplink(journal, tls, service)
    uplink.startService()
    try:
        # Steps 1-3: the request is lost, then its answer is lost, then it arrives.
        await wait_until(reactor(), lambda: (tls / RENEWED_CERT).exists(),
                         "the renewed certificate on the unit", 30)
        assert cuts.requests == ["drop", "sign-then-cut", "pass"]
        rows = query(pg_dsn, "SELECT new_serial, old_serial, confirmed_at FROM "
                             "certificate_renewals WHERE edge_id = %s", (EDGE_ID,))
        assert len(rows) == 1, "the repeated request (same key) got the same certificate"
        new_serial, old_serial, confirmed = int(rows[0][0]), int(rows[0][1]), rows[0][2]
        assert old_serial == old.serial and confirmed is None
        renewed = CertificateStore(tls).renewed_certificate()
        assert renewed is not None and renewed.serial_number == new_serial
        assert renewed.not_valid_after_utc > old.certificate.not_valid_after_utc
        issuing = x509.load_pem_x509_certificate((folder / pki.ISSUING_CERT).read_bytes())
        renewed.verify_directly_issued_by(issuing)
        await wait_until(reactor(), lambda: uplink.connected, "the unit back online", 10)
        journal_some()
        await wait_until(reactor(), lambda: journal.pending == 0, "readings uploaded", 20)
        assert revoked(pg_dsn, old.serial) == [], "the old certificate is still valid"
    finally:
        await uplink.stopService()

    # Step 4: cut after storing, before switching: the unit restarts over the same files,
    # and the first connection with the new certificate is cut before admission.
    cuts.admit_plan[new_serial] = ["cut-before", "cut-after"]
    journal_some()
    uplink = make_uplink(journal, tls, service)
    uplink.startService()
    try:
        await wait_until(reactor(), lambda: any(s == old.serial for s, _ in cuts.admissions[-1:])
                         and uplink.connected, "the old certificate welcomed after the cut", 20)
        assert cuts.admissions[-2:] == [(new_serial, "cut-before"), (old.serial, "pass")]
        assert (tls / RENEWED_CERT).exists() and (tls / RENEWAL_KEY).exists()
        assert query(pg_dsn, "SELECT confirmed_at FROM certificate_renewals")[0][0] is None
        journal_some()
        await wait_until(reactor(), lambda: journal.pending == 0, "readings uploaded", 20)

        # Step 5: the next connection presents the new certificate; admission confirms the
        # renewal (and revokes the old serial) but the Welcome is cut.  The old certificate is
        # then refused, and the unit goes on with the new one at once, not after the
        # revoked unit's backoff (an hour here).
        cuts.cut()
        await wait_until(reactor(), lambda: not (tls / RENEWED_CERT).exists(),
                         "the renewed certificate in use", 20)
        await logs.wait_for(reactor(), "the old certificate was refused")
        steps = [(s, what) for s, what in cuts.admissions]
        assert (new_serial, "cut-after") in steps
        assert steps[-1] == (new_serial, "pass"), steps
        await wait_until(reactor(), lambda: uplink.connected, "the unit online", 10)
        journal_some()
        await wait_until(reactor(), lambda: journal.pending == 0, "readings uploaded", 20)
    finally:
        await uplink.stopService()
        journal.close()

    # The unit holds only the new certificate; the cloud confirmed it and revoked the old one.
    in_use = x509.load_pem_x509_certificate((tls / pki.EDGE_CERT).read_bytes())
    assert in_use.serial_number == new_serial
    assert not (tls / RENEWAL_KEY).exists() and not (tls / RENEWED_CERT).exists()
    assert query(pg_dsn, "SELECT confirmed_at IS NOT NULL FROM certificate_renewals") == [(True,)]
    assert revoked(pg_dsn, old.serial) == [(f"renewed: replaced by serial {new_serial}",)]
    assert stored(pg_dsn) == (appended, appended), "every reading exactly once"

    # The old certificate no longer gets in.
    from gridedge import loadgen

    client, _ = await loadgen.connect(reactor(), endpoint_of(service),
                                      test_pki.client_tls(old_copy), hello())
    await within(reactor(), client.lost, 10)
    assert [e.code for e in client.errors] == [ErrorCode.UNAUTHORIZED]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_cloud_without_an_issuing_ca_refuses_and_the_unit_keeps_its_certificate(
    tmp_path: Path, pg_dsn: str, logs: LogCapture
) -> None:
    """Renewal not set up: the unit is told why, keeps working with its certificate, and does
    not ask again on the next connection (refused_wait)."""
    test_pki = make_pki(tmp_path)
    service = await start_cloud(reactor(), test_pki, pg_dsn)
    tls = tmp_path / "unit" / "tls"
    unit_tls(test_pki, tls)
    journal = Journal(tmp_path / "unit" / "journal.db", max_bytes=10 << 20)
    journal.open()
    journal.append(records(10))
    uplink = make_uplink(journal, tls, service)
    uplink.startService()
    try:
        await logs.wait_for(reactor(), "answer not kept", "renewal not enabled", seconds=20)
        await wait_until(reactor(), lambda: journal.pending == 0, "readings uploaded", 20)
        service.listener.factory.abort_all()
        await wait_until(reactor(), lambda: uplink.status().connections >= 2, "a reconnect", 20)
        assert len(logs.matching("certificate request refused")) == 1
        assert not (tls / RENEWED_CERT).exists()
    finally:
        await uplink.stopService()
        journal.close()
        await service.stopService()


def test_renewal_between_real_processes(tmp_path: Path, pg_dsn: str) -> None:
    """`gridcloud serve --issuing-ca-cert ...` and `gridedge run` with a [certificate] section,
    through a proxy that cuts the link once the unit holds the new certificate: the unit
    switches, the cloud confirms and revokes the old serial.  The processes as an operator
    starts them (the in-process test above covers each cut)."""
    from support import edge_harness as h
    from support.proxy import FaultProxy
    from support.waiting import wait_until as poll

    folder = pki.PKIDirectory(tmp_path / "pki")
    root = folder.init()
    folder.server([h.SERVER_NAME])
    folder.issuing_ca()
    data = tmp_path / "data"
    issued = pki.issue_edge(root, h.EDGE_ID, days=10 / 1440)
    tls = data / "tls"
    tls.mkdir(parents=True)
    pki.write_private_key(tls / pki.EDGE_KEY, issued)
    pki.write_certificate(tls / pki.EDGE_CERT, issued.cert_pem())
    pki.write_certificate(tls / pki.CA_CERT, root.cert_pem())
    cloud = h.Cloud(tmp_path, h.Pki(folder.path, tls), pg_dsn)
    cloud.proc.argv += ["--issuing-ca-cert", str(folder.path / pki.ISSUING_CERT),
                        "--issuing-ca-key", str(folder.path / pki.ISSUING_KEY),
                        "--certificate-days", str(RENEWED_DAYS)]
    with FaultProxy("127.0.0.1", cloud.port) as proxy:
        edge = h.Edge(tmp_path, data, h.edge_config(
            data, uplink_port=proxy.port, radio=None,
            extra=f"\n[certificate]\nrenew_before_days = {RENEW_BEFORE / 86400}\n"))
        logs = (cloud.log, edge.log)
        with h.running(edge, cloud):
            cloud.start()
            edge.start()
            poll(lambda: (tls / RENEWED_CERT).exists(), 60, "the renewed certificate", logs)
            assert revoked(pg_dsn, issued.serial) == []
            proxy.cut()
            poll(lambda: not (tls / RENEWED_CERT).exists(), 60, "the switch", logs)
            in_use = x509.load_pem_x509_certificate((tls / pki.EDGE_CERT).read_bytes())
            poll(lambda: revoked(pg_dsn, issued.serial) != [], 30, "the old serial revoked",
                 logs)
            rows = query(pg_dsn, "SELECT new_serial, confirmed_at IS NOT NULL "
                                 "FROM certificate_renewals WHERE edge_id = %s", (h.EDGE_ID,))
            assert rows == [(in_use.serial_number, True)]
            poll(lambda: "the renewed certificate was welcomed" in edge.log.read_text(), 10,
                 "the unit's log line", logs)
