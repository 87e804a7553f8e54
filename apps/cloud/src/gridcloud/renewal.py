"""Renewing edge certificates over gridwire: check a CertificateRequest, sign, record, answer.

Why on the cloud and over the link: a unit's certificate expires (and a key may
leak) while the unit sits on a pole nobody visits.  The unit makes a new key on
its data partition and sends a PKCS#10 request (gridwire ``CertificateRequest``,
0x80) over its authenticated connection; this module answers it
(``CertificateIssued``, 0x81) with a certificate signed by the *online issuing
CA*, an intermediate under the offline project CA (``gridcloud pki
issuing-ca``).

What is checked before signing (:func:`check_request`): the request is valid
DER and its self-signature is good (the unit holds the key), its key is EC P-256
(the only key type the project uses: small certificates, cheap handshakes), and
it names the edge of the connection's own certificate.  The certificate is built
from the connection's identity, never copied from the request, and lives
``[server] certificate_days``.

Idempotent: a request for a key signed already is answered with the same
certificate (``record_certificate_renewal()``, migration 0011), so an answer
lost in a cut costs one repeated request on the next connection.  The old
certificate stays valid until the unit connects with the new one: admission
then confirms the renewal and revokes the old serial
(:meth:`gridcloud.ingest.IngestStore.admit`).

One request per connection is served; a database failure answers nothing (the
unit asks again later).  Signing takes well under a millisecond (ECDSA P-256),
so it runs on the reactor.

Tests: tests/cloud/test_cloud_renewal.py, tests/system/test_certificate_renewal.py.
"""

from __future__ import annotations

import datetime
import hashlib
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gridwire import CertificateIssued, CertificateRequest
from twisted.internet import defer
from twisted.logger import Logger

from . import pki

if TYPE_CHECKING:
    from .connection import EdgeConnection

log = Logger(namespace="gridcloud.renewal")

#: The statement that records a signed certificate (or finds the one signed for this key).
RECORD_SQL = "SELECT * FROM record_certificate_renewal(%s, %s, %s, %s, %s, %s, %s)"
#: A certificate signed already for this edge and key, not superseded.
EXISTING_SQL = (
    "SELECT certificate, issuer, new_serial FROM certificate_renewals"
    " WHERE edge_id = %s AND public_key_sha256 = %s AND superseded_at IS NULL"
)

#: What the edge hears from a cloud without an issuing CA.
NOT_ENABLED = "renewal not enabled on this cloud"


class RenewalRefused(Exception):
    """The request cannot be signed; ``str()`` is what the edge is told."""


def check_request(der: bytes, edge_id: str) -> x509.CertificateSigningRequest:
    """The request in ``der`` if the cloud may sign it for ``edge_id``, else RenewalRefused."""
    try:
        request = x509.load_der_x509_csr(der)
    except ValueError:
        raise RenewalRefused("not a PKCS#10 request in DER") from None
    if not request.is_signature_valid:
        raise RenewalRefused("the request's signature does not verify")
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise RenewalRefused("the key must be EC P-256")
    try:
        named = pki.edge_id_from_request(request)
    except pki.PKIError as exc:
        raise RenewalRefused(str(exc)) from None
    if named != edge_id:
        raise RenewalRefused(f"the request names edge {named!r}, this connection is {edge_id!r}")
    return request


def key_fingerprint(request: x509.CertificateSigningRequest) -> bytes:
    """SHA-256 of the request's SubjectPublicKeyInfo: what makes a repeated request the same."""
    spki = request.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


Query = Callable[[str, Any], "defer.Deferred[list[tuple[Any, ...]]]"]


class CertificateIssuer:
    """The handler of CertificateRequest on a serve node (``CloudService.handlers``).

    ``issuing`` is None on a cloud without an issuing CA: every request is
    answered with a refusal, so the unit keeps its certificate and logs why.
    """

    def __init__(
        self,
        issuing: pki.Issued | None,
        query: Query,
        *,
        days: float = pki.RENEWED_DAYS,
        now: Callable[[], float],
    ) -> None:
        self._issuing = issuing
        self._query = query
        self._days = days
        self._now = now
        self._served: weakref.WeakSet[EdgeConnection] = weakref.WeakSet()
        #: certificates signed by this process (repeats answered from the database excluded)
        self.signed = 0
        #: requests refused by this process
        self.refused = 0

    def __call__(self, connection: EdgeConnection, request: CertificateRequest) -> None:
        edge_id = connection.edge_id
        if edge_id is None:
            return
        if connection in self._served:
            self._refuse(connection, "one certificate request per connection")
            return
        self._served.add(connection)
        if self._issuing is None:
            self._refuse(connection, NOT_ENABLED)
            return
        try:
            parsed = check_request(request.csr, edge_id)
        except RenewalRefused as exc:
            self._refuse(connection, str(exc))
            return
        d = defer.ensureDeferred(self._answer(connection, edge_id, parsed, self._issuing))
        d.addErrback(self._failed, connection)

    async def _answer(
        self,
        connection: EdgeConnection,
        edge_id: str,
        request: x509.CertificateSigningRequest,
        issuing: pki.Issued,
    ) -> None:
        fingerprint = key_fingerprint(request)
        rows = await self._query(EXISTING_SQL, (edge_id, fingerprint))
        if not rows:
            moment = datetime.datetime.fromtimestamp(self._now(), datetime.UTC)
            cert = pki.sign_edge_request(issuing, request, edge_id, days=self._days, now=moment)
            der = cert.public_bytes(serialization.Encoding.DER)
            issuer = issuing.certificate.public_bytes(serialization.Encoding.DER)
            rows = await self._query(RECORD_SQL, (
                edge_id, str(connection.serial), str(cert.serial_number), fingerprint, der,
                issuer, cert.not_valid_after_utc,
            ))
            self.signed += 1
        certificate, issuer_der, serial = rows[0]
        log.info(
            "edge {edge} ({peer}): issued certificate serial {serial} to replace serial {old}",
            edge=edge_id, peer=connection.peer, serial=int(serial), old=connection.serial,
        )
        if not connection.closing:  # else it asks again on its next connection: same answer
            connection.send(CertificateIssued(certificate=bytes(certificate),
                                              issuer=bytes(issuer_der)))

    def _refuse(self, connection: EdgeConnection, why: str) -> None:
        self.refused += 1
        log.warn("edge {edge} ({peer}): certificate request refused: {why}",
                 edge=connection.edge_id, peer=connection.peer, why=why)
        if not connection.closing:
            connection.send(CertificateIssued(detail=why[:255]))

    def _failed(self, failure: Any, connection: EdgeConnection) -> None:
        log.warn("edge {edge} ({peer}): certificate request not answered (asks again later): "
                 "{why}", edge=connection.edge_id, peer=connection.peer,
                 why=failure.getErrorMessage())
        self._served.discard(connection)
