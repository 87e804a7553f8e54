"""The project's device PKI: one CA that signs server and edge certificates.

Why a PKI of our own: the cloud must know *which* edge is talking, not only
that the peer is "somebody with a certificate".  The project CA signs one
certificate per edge whose identity is the edge id, and the server
certificates that edges check by name.  Nothing else is trusted on either
side, so a certificate from any other CA is refused during the handshake.

Choices (documented in docs/cloud.md):

- Keys are ECDSA P-256: small certificates (fewer bytes on a metered cellular
  link at every full handshake) and cheap signatures (the cloud handshakes
  thousands of edges after a restart).
- Edge identity: the subject CN is the edge id, and a SAN URI
  ``gridedge:edge/<edge id>`` says the same thing in a form that cannot be
  confused with a host name.  :func:`edge_id_from_certificate` prefers the URI.
- Private keys are written with mode 0600 from the moment the file exists
  (``os.open`` with the mode, never chmod after the fact) and are never printed.
- Renewal over the link: the project CA stays offline; an *issuing CA* (an
  intermediate the project CA certifies, :meth:`PKIDirectory.issuing_ca`) lives
  on the serve nodes and signs the requests edges send when their certificate
  nears expiry (:func:`sign_edge_request`, :mod:`gridcloud.renewal`).  The
  project CA therefore allows one intermediate (path length 1); a CA made before
  renewal existed has path length 0 and cannot certify one (see docs/operations.md).
- Revocation is kept in PostgreSQL (``edges.revoked_at`` and
  ``revoked_certificates``), checked by the server at every connection, so it
  takes effect on every cloud node at once; see :mod:`gridcloud.revocation`.

The functions take ``now`` so tests can make expired or not-yet-valid
certificates in microseconds.  Tests: tests/cloud/test_cloud_pki.py.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

EDGE_URI_PREFIX = "gridedge:edge/"
EDGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

CA_DAYS = 3650
SERVER_DAYS = 398
EDGE_DAYS = 3650
ISSUING_DAYS = 1825
#: Lifetime of a certificate issued by renewal, by default (``[server] certificate_days``).
RENEWED_DAYS = 365

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
EDGE_CERT = "edge.pem"
EDGE_KEY = "edge.key"
ISSUING_CERT = "issuing-ca.pem"
ISSUING_KEY = "issuing-ca.key"


class PKIError(Exception):
    """A PKI operation cannot be done as asked (bad name, missing CA, file exists...)."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate with its private key: what every issuing function returns."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: float,
    now: datetime.datetime | None,
    not_after: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    start = _now(now) - datetime.timedelta(minutes=5)  # tolerate small clock skew
    if not_after is None:
        not_after = start + datetime.timedelta(days=days)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(
    common_name: str = "gridedge project CA",
    *,
    days: int = CA_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """Create a self-signed project CA: it signs server and edge certificates, and at most
    one level of intermediate (the online issuing CA of renewal)."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca: Issued,
    subject: x509.Name,
    san: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: float,
    now: datetime.datetime | None,
) -> Issued:
    key = _new_key()
    return Issued(_sign_leaf(ca, key.public_key(), subject, san, usage, days, now), key)


def _sign_leaf(
    ca: Issued,
    public_key: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    san: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: float,
    now: datetime.datetime | None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    return (
        _builder(subject, ca.certificate.subject, public_key, days, now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def make_issuing_ca(
    root: Issued,
    common_name: str = "gridedge issuing CA",
    *,
    days: int = ISSUING_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """An intermediate CA under ``root`` that signs edge certificates only (path length 0).

    Why an intermediate: the key that signs renewals must be online on every serve
    node; if it leaks, the operator revokes it and makes another, while the project
    CA (offline) and every certificate it signed stay valid.
    """
    bc = root.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    if bc.path_length is not None and bc.path_length < 1:
        raise PKIError(
            "this project CA has path length 0 and cannot certify an issuing CA "
            "(it was made before renewal existed; see docs/operations.md)"
        )
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        _builder(name, root.certificate.subject, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_server(
    ca: Issued,
    names: Sequence[str],
    *,
    days: int = SERVER_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """Issue a TLS server certificate for the DNS ``names`` (the first is the CN)."""
    if not names:
        raise PKIError("a server certificate needs at least one --name")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    san = [x509.DNSName(n) for n in names]
    return _leaf(ca, subject, san, ExtendedKeyUsageOID.SERVER_AUTH, days, now)


def check_edge_id(edge_id: str) -> str:
    """Return ``edge_id`` if it is a valid edge id, else raise PKIError saying why."""
    if not EDGE_ID_PATTERN.match(edge_id):
        raise PKIError(
            f"invalid edge id {edge_id!r}: 1-64 characters, letters, digits, '.', '_', '-',"
            " starting with a letter or digit"
        )
    return edge_id


def issue_edge(
    ca: Issued,
    edge_id: str,
    *,
    days: int = EDGE_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """Issue an edge (TLS client) certificate whose identity is ``edge_id``."""
    subject, san = _edge_names(edge_id)
    return _leaf(ca, subject, san, ExtendedKeyUsageOID.CLIENT_AUTH, days, now)


def _edge_names(edge_id: str) -> tuple[x509.Name, list[x509.GeneralName]]:
    check_edge_id(edge_id)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge"),
            x509.NameAttribute(NameOID.COMMON_NAME, edge_id),
        ]
    )
    return subject, [x509.UniformResourceIdentifier(EDGE_URI_PREFIX + edge_id)]


def sign_edge_request(
    issuing: Issued,
    request: x509.CertificateSigningRequest,
    edge_id: str,
    *,
    days: float = RENEWED_DAYS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Sign a renewal request for ``edge_id`` (already checked by gridcloud.renewal).

    The certificate says only what the cloud decides: the subject and SAN are built
    from ``edge_id`` (the connection's identity), never copied from the request, and
    it expires ``days`` after ``now`` (not after ``now`` minus the skew allowance,
    so short test lifetimes are what they say).
    """
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError("the request's key is not an EC key")
    subject, san = _edge_names(edge_id)
    not_after = _now(now) + datetime.timedelta(days=days)
    return _sign_leaf(issuing, key, subject, san, ExtendedKeyUsageOID.CLIENT_AUTH, days, now,
                      not_after)


def edge_id_from_request(request: x509.CertificateSigningRequest) -> str:
    """The edge id a signing request names (SAN URI, else CN), like
    :func:`edge_id_from_certificate`; raises PKIError when it names none or several."""
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = [u for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
                if u.startswith(EDGE_URI_PREFIX)]
    if len(uris) > 1:
        raise PKIError("request names more than one edge")
    if uris:
        return check_edge_id(uris[0][len(EDGE_URI_PREFIX):])
    cns = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PKIError("request has no edge identity (no SAN URI, no single CN)")
    value = cns[0].value
    return check_edge_id(value if isinstance(value, str) else value.decode())


def edge_id_from_certificate(cert: x509.Certificate) -> str:
    """The edge id a certificate speaks for: its SAN URI, else its CN.

    Raises PKIError when neither names a valid edge id, so the server can
    refuse with a reason instead of inventing an identity.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = [
            u
            for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(EDGE_URI_PREFIX)
        ]
    if len(uris) > 1:
        raise PKIError("certificate names more than one edge")
    if uris:
        return check_edge_id(uris[0][len(EDGE_URI_PREFIX) :])
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PKIError("certificate has no edge identity (no SAN URI, no single CN)")
    value = cns[0].value
    return check_edge_id(value if isinstance(value, str) else value.decode())


def check_validity(cert: x509.Certificate, now: float) -> None:
    """Raise PKIError unless ``cert`` is valid at ``now`` (unix seconds).

    OpenSSL checks the dates only in a full handshake: a resumed TLS session
    brings back the certificate of the handshake that made it, unchecked, so
    the server checks it again itself on every connection.
    """
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    if moment > cert.not_valid_after_utc:
        raise PKIError(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
    if moment < cert.not_valid_before_utc:
        raise PKIError(f"certificate not valid before {cert.not_valid_before_utc.isoformat()}")


# -- files --------------------------------------------------------------------


def write_private_key(path: Path, issued: Issued, *, overwrite: bool = False) -> None:
    """Write a key file that is 0600 from its first byte (no window where others can read)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise PKIError(f"{path} exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode is masked by umask; be explicit
        f.write(issued.key_pem())


def write_certificate(path: Path, pem: bytes) -> None:
    """Write a certificate (public) with mode 0644."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o644)
    tmp.replace(path)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Load a certificate and its private key from PEM files."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: not an EC private key")
    return Issued(cert, key)


def _write_pair(
    directory: Path, cert_name: str, key_name: str, issued: Issued, overwrite: bool
) -> None:
    if not directory.exists():
        directory.mkdir(parents=True)
        directory.chmod(0o700)  # it holds a private key
    write_private_key(directory / key_name, issued, overwrite=overwrite)
    write_certificate(directory / cert_name, issued.cert_pem())


@dataclass(frozen=True, slots=True)
class PKIDirectory:
    """The operator's PKI folder: ca.pem, ca.key (0600), server.pem, server.key (0600)."""

    path: Path

    def init(self, *, days: int = CA_DAYS, common_name: str = "gridedge project CA") -> Issued:
        """Create the CA; refuses if one exists (a new CA would orphan every edge)."""
        if (self.path / CA_KEY).exists() or (self.path / CA_CERT).exists():
            raise PKIError(f"{self.path} already holds a CA; refusing to replace it")
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o700)
        ca = make_ca(common_name, days=days)
        _write_pair(self.path, CA_CERT, CA_KEY, ca, overwrite=False)
        return ca

    def ca(self) -> Issued:
        if not (self.path / CA_KEY).exists():
            raise PKIError(f"no CA in {self.path}: run 'gridcloud pki init --dir {self.path}'")
        return load_issued(self.path / CA_CERT, self.path / CA_KEY)

    def issuing_ca(self, *, days: int = ISSUING_DAYS, replace: bool = False) -> Issued:
        """Create the online issuing CA (issuing-ca.pem, issuing-ca.key) under the project CA.

        Refuses to replace one unless ``replace``: certificates it signed stay valid
        after a replacement (the serve nodes must trust both until they expire).
        """
        if not replace and (self.path / ISSUING_KEY).exists():
            raise PKIError(f"{self.path} already holds an issuing CA; --replace to make another")
        issued = make_issuing_ca(self.ca(), days=days)
        _write_pair(self.path, ISSUING_CERT, ISSUING_KEY, issued, overwrite=replace)
        return issued

    def server(self, names: Sequence[str], *, days: int = SERVER_DAYS) -> Issued:
        """Issue (or re-issue, replacing) the server certificate."""
        issued = issue_server(self.ca(), names, days=days)
        _write_pair(self.path, SERVER_CERT, SERVER_KEY, issued, overwrite=True)
        return issued

    def edge(
        self,
        edge_id: str,
        out: Path | None = None,
        *,
        days: int = EDGE_DAYS,
        overwrite: bool = False,
    ) -> tuple[Issued, Path]:
        """Issue an edge certificate into ``out`` (default PKI/edges/<edge id>/).

        The folder gets exactly what the edge keeps in /data/gridedge/tls/:
        edge.pem, edge.key (0600) and ca.pem.
        """
        ca = self.ca()
        target = out if out is not None else self.path / "edges" / check_edge_id(edge_id)
        issued = issue_edge(ca, edge_id, days=days)
        _write_pair(target, EDGE_CERT, EDGE_KEY, issued, overwrite=overwrite)
        write_certificate(target / CA_CERT, ca.cert_pem())
        return issued, target
