"""Certificate renewal's decisions on the unit, without I/O: when to ask, what to check, which
certificate the next connection presents.

The unit's certificate expires; before it does (``[certificate] renew_before_days``)
the unit makes a new key, keeps it on /data, and asks the cloud over gridwire
(``CertificateRequest``, 0x80) to sign it.  The answer (``CertificateIssued``,
0x81) is checked here before anything is kept: the certificate is for the new
key and for this edge, signed by an issuing CA that the project CA (ca.pem)
signed, and valid now.  Then:

* the unit keeps both certificates (:mod:`gridedge.uplink.certstore`) and
  presents the new one from its next connection;
* a connection with the new one that is welcomed proves it works: the new one
  becomes the one in use, the old one is dropped (the cloud, on admitting it,
  revokes the old serial);
* a connection with the new one that ends before Welcome (refused, or cut)
  makes the following attempt use the old one, then the new one again, and so
  on: the unit always has a certificate the cloud accepts, whichever step a
  cut interrupts.

A request goes at most once per connection; a refusal (a cloud without an
issuing CA, say) is logged and not repeated for ``refused_wait`` seconds, as
every request costs bytes on a metered link.  A cloud that predates renewal
skips the request (an optional message) and never answers: the unit keeps its
key and asks again on a later connection.

Tests: tests/edge/test_renewal.py, tests/system/test_certificate_renewal.py.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gridwire import CertificateIssued

from gridedge.uplink.certstore import CertificateStore

EDGE_URI_PREFIX = "gridedge:edge/"


class RenewalRejected(Exception):
    """The cloud's answer is not kept; ``str()`` says why."""


def edge_id_of(certificate: x509.Certificate) -> str:
    """The edge id a certificate names (its ``gridedge:edge/`` SAN URI, else its CN)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = [u for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
                if u.startswith(EDGE_URI_PREFIX)]
    if uris:
        return uris[0][len(EDGE_URI_PREFIX):]
    cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = cns[0].value if cns else ""
    return value if isinstance(value, str) else value.decode()


def signing_request(key: ec.EllipticCurvePrivateKey, edge_id: str) -> bytes:
    """A PKCS#10 request in DER for ``key``, naming ``edge_id`` as the unit's certificates do."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge"),
                      x509.NameAttribute(NameOID.COMMON_NAME, edge_id)])
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(EDGE_URI_PREFIX + edge_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def _spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey)
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def check_issued(
    message: CertificateIssued,
    key: ec.EllipticCurvePrivateKey,
    edge_id: str,
    ca: x509.Certificate,
    now: float,
) -> tuple[x509.Certificate, x509.Certificate]:
    """(certificate, issuer) from the cloud's answer, if the unit may use them; else
    RenewalRejected saying why."""
    if not message.certificate:
        raise RenewalRejected(f"the cloud refused: {message.detail or 'no reason given'}")
    try:
        certificate = x509.load_der_x509_certificate(message.certificate)
        issuer = x509.load_der_x509_certificate(message.issuer)
    except ValueError:
        raise RenewalRejected("the answer is not DER certificates") from None
    if _spki(certificate.public_key()) != _spki(key):
        raise RenewalRejected("the certificate is not for the key this unit asked with")
    if edge_id_of(certificate) != edge_id:
        raise RenewalRejected(f"the certificate names {edge_id_of(certificate)!r}, "
                              f"this unit is {edge_id!r}")
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise RenewalRejected("the issuer is not a CA")
    try:
        certificate.verify_directly_issued_by(issuer)
        issuer.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise RenewalRejected("the certificate does not chain to the project CA") from None
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    if not certificate.not_valid_before_utc <= moment < certificate.not_valid_after_utc:
        raise RenewalRejected("the certificate is not valid now")
    return certificate, issuer


@dataclass(frozen=True, slots=True)
class RenewalSettings:
    """``[certificate]``: seconds before expiry to start renewing (0: never), and to wait
    after a refusal."""

    renew_before: float = 30 * 86400.0
    refused_wait: float = 86400.0


class Renewal:
    """The renewal state of one unit, driven by the uplink service (gridedge.uplink.service)."""

    def __init__(self, store: CertificateStore, settings: RenewalSettings) -> None:
        self.store = store
        self.settings = settings
        self._refused_until = 0.0
        self._last_used_renewed = False
        self._last_welcomed = True

    # -- which certificate the next connection presents -------------------------------------

    def use_renewed(self) -> bool:
        """Whether the next connection presents the renewed certificate: yes while one is
        waiting, except right after a connection with it ended without Welcome."""
        if self.store.renewed_certificate() is None:
            return False
        return not (self._last_used_renewed and not self._last_welcomed)

    def waiting_after_old_refused(self) -> bool:
        """True when the connection that just ended presented the old certificate while a
        renewed one waits (the service then skips the refused unit's long backoff)."""
        return not self._last_used_renewed and self.store.renewed_certificate() is not None

    def attempt(self, renewed: bool) -> None:
        """A connection presenting the renewed certificate (or not) is starting."""
        self._last_used_renewed = renewed
        self._last_welcomed = False

    def welcomed(self) -> bool:
        """The connection was welcomed; True when that proved the renewed certificate (it is
        now the one in use, the old one dropped)."""
        self._last_welcomed = True
        if not self._last_used_renewed:
            return False
        self.store.promote()
        self._last_used_renewed = False
        return True

    # -- asking -----------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """True when the certificate in use is within ``renew_before`` of expiry, no renewed one
        is waiting, and no refusal is recent."""
        if self.settings.renew_before <= 0 or now < self._refused_until:
            return False
        if self.store.renewed_certificate() is not None:
            return False
        expires = self.store.current_certificate().not_valid_after_utc.timestamp()
        return expires - now <= self.settings.renew_before

    def request(self) -> bytes:
        """The signing request to send: for the kept renewal key, made (and kept) if none."""
        key = self.store.renewal_key()
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            self.store.save_key(key)  # before it leaves: a lost answer is asked again for it
        return signing_request(key, edge_id_of(self.store.current_certificate()))

    def answer(self, message: CertificateIssued, now: float) -> x509.Certificate:
        """Check and keep the cloud's answer; the new certificate, or RenewalRejected."""
        key = self.store.renewal_key()
        if key is None:
            raise RenewalRejected("an answer without a request in progress")
        try:
            certificate, issuer = check_issued(
                message, key, edge_id_of(self.store.current_certificate()),
                self.store.ca_certificate(), now)
        except RenewalRejected:
            if not message.certificate:
                self._refused_until = now + self.settings.refused_wait
            raise
        self.store.save_renewed(certificate, issuer)
        return certificate
