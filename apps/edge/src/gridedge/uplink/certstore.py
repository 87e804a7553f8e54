"""The unit's certificate files on /data, written so that a power cut never leaves it without one.

Files in the uplink's ``tls_dir`` (``gridcloud pki edge`` provisions the first three):

    edge.pem, edge.key   the certificate in use and its key (0600)
    ca.pem               the project CA: the cloud's server certificate must chain to it
    renewal.key          a new key made for a renewal (0600), kept until the renewal ends
    renewed.pem          its certificate and the issuing CA's, as the cloud answered (0600)

Why these steps (docs/edge.md, "Certificate renewal"): each file is written
whole to a temporary name, fsynced, renamed over, and the folder fsynced, so a
file is either the old one or the new one.  The pair that must change together
(edge.pem, edge.key) changes in an order that recovery can finish:

1. ``save_key``: renewal.key, *before* the request is sent, so a request whose
   answer is lost is repeated with the same key (the cloud answers the same
   certificate).
2. ``save_renewed``: renewed.pem once the answer is checked.  From here the
   unit has two working certificates and tries the new one at its next
   connection (:mod:`gridedge.uplink.renewal`).
3. ``promote``, once a connection with the new one was welcomed: edge.key <-
   the new key, then edge.pem <- the new certificate, then renewed.pem and
   renewal.key go.  A cut between the two renames leaves edge.key matching
   renewed.pem, not edge.pem: :meth:`CertificateStore.recover` (run before
   every load) finishes the promotion then.

Tests: tests/edge/test_certstore.py.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gridedge.uplink.tls import CA_FILE, CERT_FILE, KEY_FILE, DeviceIdentity

RENEWAL_KEY = "renewal.key"
RENEWED_CERT = "renewed.pem"


class CertificateStoreError(Exception):
    """The files are inconsistent in a way recovery cannot settle; the message says how."""


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync of the folder."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    """fsync a folder, so that renames and removals in it survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CertificateStore:
    """The unit's tls/ folder: what is in use, what is being renewed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # -- reading ----------------------------------------------------------------------------

    def current(self) -> DeviceIdentity:
        """The identity in use (edge.pem + edge.key + ca.pem), after recovery."""
        self.recover()
        return DeviceIdentity.load(self.folder)

    def current_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.folder / CERT_FILE).read_bytes())

    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.folder / CA_FILE).read_bytes())

    def renewal_key(self) -> ec.EllipticCurvePrivateKey | None:
        """The key made for a renewal in progress, if any."""
        path = self.folder / RENEWAL_KEY
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateStoreError(f"{path}: not an EC private key")
        return key

    def renewed(self) -> DeviceIdentity | None:
        """The renewed identity waiting for its first welcomed connection, if any."""
        path = self.folder / RENEWED_CERT
        if not path.exists():
            return None
        key = self.renewal_key()
        if key is None:
            return None
        from twisted.internet import ssl

        chain = path.read_bytes()
        ca = ssl.Certificate.loadPEM((self.folder / CA_FILE).read_bytes())
        cert = ssl.PrivateCertificate.loadPEM(chain + key_pem(key))  # type: ignore[no-untyped-call]
        return DeviceIdentity(cert, ca)

    def renewed_certificate(self) -> x509.Certificate | None:
        path = self.folder / RENEWED_CERT
        if not path.exists():
            return None
        return x509.load_pem_x509_certificates(path.read_bytes())[0]

    # -- the three steps ---------------------------------------------------------------------

    def save_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Step 1: keep the renewal's key before its request leaves the unit."""
        write_durably(self.folder / RENEWAL_KEY, key_pem(key))

    def save_renewed(self, certificate: x509.Certificate, issuer: x509.Certificate) -> None:
        """Step 2: keep the certificate the cloud issued for the renewal key (checked by the
        caller), with its issuer after it."""
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certificate, issuer))
        write_durably(self.folder / RENEWED_CERT, pem)

    def promote(self) -> None:
        """Step 3: the renewed certificate worked; make it the one in use, drop the old one."""
        key = self.renewal_key()
        renewed = self.folder / RENEWED_CERT
        if key is None or not renewed.exists():
            raise CertificateStoreError("no renewed certificate to promote")
        write_durably(self.folder / KEY_FILE, key_pem(key))
        self._finish(renewed.read_bytes())

    def _finish(self, chain: bytes) -> None:
        write_durably(self.folder / CERT_FILE, chain, 0o644)
        for name in (RENEWED_CERT, RENEWAL_KEY):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
        sync_dir(self.folder)

    def discard(self) -> None:
        """Forget a renewal in progress (its key, and its certificate if it came)."""
        for name in (RENEWED_CERT, RENEWAL_KEY):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
        sync_dir(self.folder)

    def recover(self) -> bool:
        """Finish a promotion cut between its two renames; True if there was one to finish.

        Also drops a renewed certificate that is not for the renewal key (cannot happen
        through this class; a hand-edited folder)."""
        renewed = self.folder / RENEWED_CERT
        key = self.renewal_key()
        if not renewed.exists() or key is None:
            return False
        chain = renewed.read_bytes()
        certificate = x509.load_pem_x509_certificates(chain)[0]
        if _public(certificate.public_key()) != _public(key):  # type: ignore[arg-type]
            renewed.unlink()
            sync_dir(self.folder)
            return False
        in_use = serialization.load_pem_private_key((self.folder / KEY_FILE).read_bytes(),
                                                    password=None)
        if isinstance(in_use, ec.EllipticCurvePrivateKey) and _public(in_use) == _public(key):
            self._finish(chain)  # edge.key is the new key already: step 3 was cut half way
            return True
        return False
