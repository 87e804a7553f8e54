"""The unit's renewal decisions: when it asks, what it refuses to keep, which certificate
each connection presents (sans I/O but over real files and real certificates)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gridcloud import pki
from gridedge.uplink.certstore import CertificateStore
from gridedge.uplink.renewal import Renewal, RenewalRejected, RenewalSettings, edge_id_of
from gridwire import CertificateIssued


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def folder(tmp_path: Path) -> pki.PKIDirectory:
    d = pki.PKIDirectory(tmp_path / "pki")
    d.init()
    d.issuing_ca()
    return d


def unit(folder: pki.PKIDirectory, tmp_path: Path, days: float = 10) -> Renewal:
    issued = pki.issue_edge(folder.ca(), "edge-9", days=days)  # type: ignore[arg-type]
    tls = tmp_path / "tls"
    tls.mkdir()
    pki.write_private_key(tls / pki.EDGE_KEY, issued)
    pki.write_certificate(tls / pki.EDGE_CERT, issued.cert_pem())
    pki.write_certificate(tls / pki.CA_CERT, folder.ca().cert_pem())
    return Renewal(CertificateStore(tls), RenewalSettings(renew_before=20 * 86400.0,
                                                          refused_wait=3600.0))


def sign(folder: pki.PKIDirectory, csr: bytes, edge_id: str = "edge-9",
         issuing: pki.Issued | None = None) -> CertificateIssued:
    issuing = issuing or pki.load_issued(folder.path / pki.ISSUING_CERT,
                                         folder.path / pki.ISSUING_KEY)
    cert = pki.sign_edge_request(issuing, x509.load_der_x509_csr(csr), edge_id, days=30)
    return CertificateIssued(certificate=der(cert), issuer=der(issuing.certificate))


def test_due_inside_the_margin_only(folder: pki.PKIDirectory, tmp_path: Path) -> None:
    """Due when less than renew_before is left; never with renew_before 0."""
    renewal = unit(folder, tmp_path, days=10)
    now = time.time()
    assert renewal.due(now)
    assert not renewal.due(now - 15 * 86400)
    assert not Renewal(renewal.store, RenewalSettings(renew_before=0)).due(now + 20 * 86400)


def test_the_request_reuses_the_kept_key_and_names_the_unit(
    folder: pki.PKIDirectory, tmp_path: Path
) -> None:
    """The key is kept before the request leaves; a repeated request is for the same key."""
    renewal = unit(folder, tmp_path)
    first = x509.load_der_x509_csr(renewal.request())
    second = x509.load_der_x509_csr(renewal.request())
    assert first.is_signature_valid and pki.edge_id_from_request(first) == "edge-9"
    assert first.public_key() == second.public_key()
    key = renewal.store.renewal_key()
    assert key is not None and key.public_key() == first.public_key()


def test_a_good_answer_is_kept_and_presented_next(folder: pki.PKIDirectory,
                                                   tmp_path: Path) -> None:
    """Kept; the next connection presents it; without Welcome the one after uses the old one,
    then the new one again; a Welcome with it promotes it."""
    renewal = unit(folder, tmp_path)
    cert = renewal.answer(sign(folder, renewal.request()), time.time())
    assert edge_id_of(cert) == "edge-9"
    assert not renewal.due(time.time()), "no second request while one waits"
    assert renewal.use_renewed()
    renewal.attempt(True)  # cut before Welcome
    assert not renewal.use_renewed()
    renewal.attempt(False)
    assert renewal.welcomed() is False  # welcomed with the old one: nothing changes
    assert renewal.use_renewed()
    renewal.attempt(True)
    assert renewal.welcomed() is True
    assert renewal.store.current_certificate().serial_number == cert.serial_number


@pytest.mark.parametrize("case", ["refused", "other key", "other edge", "foreign issuer",
                                  "not der"])
def test_bad_answers_are_not_kept(folder: pki.PKIDirectory, tmp_path: Path, case: str) -> None:
    """Every answer the unit must not use is rejected with a reason, and nothing is written."""
    renewal = unit(folder, tmp_path)
    csr = renewal.request()
    if case == "refused":
        message = CertificateIssued(detail="renewal not enabled on this cloud")
    elif case == "other key":
        other = ec.generate_private_key(ec.SECP256R1())
        from gridedge.uplink.renewal import signing_request

        message = sign(folder, signing_request(other, "edge-9"))
    elif case == "other edge":
        message = sign(folder, csr, edge_id="edge-10")
    elif case == "foreign issuer":
        stranger = pki.make_issuing_ca(pki.make_ca("someone else"))
        message = sign(folder, csr, issuing=stranger)
    else:
        message = CertificateIssued(certificate=b"\x30\x03abc", issuer=b"\x30\x03abc")
    with pytest.raises(RenewalRejected):
        renewal.answer(message, time.time())
    assert renewal.store.renewed_certificate() is None


def test_a_refusal_is_not_asked_again_for_a_while(folder: pki.PKIDirectory,
                                                   tmp_path: Path) -> None:
    renewal = unit(folder, tmp_path)
    renewal.request()
    now = time.time()
    with pytest.raises(RenewalRejected):
        renewal.answer(CertificateIssued(detail="no"), now)
    assert not renewal.due(now + 10)
    assert renewal.due(now + 3601)


def test_an_expired_answer_is_rejected(folder: pki.PKIDirectory, tmp_path: Path) -> None:
    renewal = unit(folder, tmp_path)
    message = sign(folder, renewal.request())
    later = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=31)).timestamp()
    with pytest.raises(RenewalRejected, match="not valid now"):
        renewal.answer(message, later)
