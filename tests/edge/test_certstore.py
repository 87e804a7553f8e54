"""The unit's certificate files: durable steps, 0600 keys, and recovery of a promotion cut
half way (the one moment edge.pem and edge.key disagree)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from gridcloud import pki
from gridedge.uplink.certstore import (
    RENEWAL_KEY,
    RENEWED_CERT,
    CertificateStore,
    key_pem,
    write_durably,
)
from gridedge.uplink.renewal import signing_request


@pytest.fixture
def world(tmp_path: Path) -> tuple[pki.PKIDirectory, CertificateStore]:
    folder = pki.PKIDirectory(tmp_path / "pki")
    folder.init()
    folder.issuing_ca()
    _, tls = folder.edge("edge-7", tmp_path / "tls")
    return folder, CertificateStore(tls)


def renew(folder: pki.PKIDirectory, store: CertificateStore) -> x509.Certificate:
    """Steps 1 and 2 as the unit does them, with the issuing CA signing."""
    key = ec.generate_private_key(ec.SECP256R1())
    store.save_key(key)
    request = x509.load_der_x509_csr(signing_request(key, "edge-7"))
    issuing = pki.load_issued(folder.path / pki.ISSUING_CERT, folder.path / pki.ISSUING_KEY)
    cert = pki.sign_edge_request(issuing, request, "edge-7", days=1)
    store.save_renewed(cert, issuing.certificate)
    return cert


def test_keys_are_private_and_the_steps_leave_no_temporary_files(
    world: tuple[pki.PKIDirectory, CertificateStore],
) -> None:
    """renewal.key and renewed.pem are 0600 from the start; no .tmp is left behind."""
    folder, store = world
    renew(folder, store)
    for name in (RENEWAL_KEY, RENEWED_CERT):
        assert stat.S_IMODE((store.folder / name).stat().st_mode) == 0o600
    assert not list(store.folder.glob("*.tmp"))


def test_promote_makes_the_renewed_certificate_the_one_in_use(
    world: tuple[pki.PKIDirectory, CertificateStore],
) -> None:
    """After promotion edge.pem/edge.key are the renewed pair and the renewal files are gone."""
    folder, store = world
    cert = renew(folder, store)
    assert store.renewed() is not None
    store.promote()
    assert store.current_certificate().serial_number == cert.serial_number
    assert store.renewal_key() is None and store.renewed_certificate() is None
    identity = store.current()  # loads: the key matches the certificate
    assert identity.certificate.getPublicKey() is not None


def test_a_promotion_cut_between_its_two_renames_is_finished_on_load(
    world: tuple[pki.PKIDirectory, CertificateStore],
) -> None:
    """Power cut after edge.key was replaced but before edge.pem: the next load finishes it,
    instead of presenting a certificate whose key is gone."""
    folder, store = world
    cert = renew(folder, store)
    key = store.renewal_key()
    assert key is not None
    write_durably(store.folder / "edge.key", key_pem(key))  # first rename of promote() only
    assert store.current_certificate().serial_number != cert.serial_number
    store.current()  # recovery runs first
    assert store.current_certificate().serial_number == cert.serial_number
    assert not (store.folder / RENEWED_CERT).exists()


def test_a_cut_before_promotion_keeps_both_certificates(
    world: tuple[pki.PKIDirectory, CertificateStore],
) -> None:
    """Stored but not yet welcomed: recovery changes nothing, both identities load."""
    folder, store = world
    before = store.current_certificate().serial_number
    renew(folder, store)
    assert store.recover() is False
    assert store.current_certificate().serial_number == before
    assert store.renewed() is not None


def test_a_renewed_certificate_for_another_key_is_dropped(
    world: tuple[pki.PKIDirectory, CertificateStore],
) -> None:
    """A renewed.pem that does not belong to renewal.key (hand-edited folder) is removed."""
    folder, store = world
    renew(folder, store)
    store.save_key(ec.generate_private_key(ec.SECP256R1()))
    assert store.recover() is False
    assert store.renewed_certificate() is None
