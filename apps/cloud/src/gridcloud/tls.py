"""The server side of mutual TLS: who may connect, and why a refusal happened.

Why not just ``PrivateCertificate.options(ca)``: three things are needed on top.

- Session resumption: without it an edge pays a full handshake (certificates
  both ways) on a metered link at every reconnection.  The default keeps
  sessions in a server-side cache (``enableSessions``): TLS 1.3 then hands the
  edge a short ticket naming the cached session, where a stateless ticket
  (``enableSessionTickets``, the other mode) carries the whole session including
  the client certificate -- about 1.4 KB more per reconnection, measured by
  bench/bench_ingest.py.  Key-exchange groups are limited to classical ones
  for the same reason (see DEFAULT_GROUPS).
- No certificate chain: the server sends its own certificate only (OpenSSL
  would otherwise add the CA's, built from the trust store: about 430 bytes
  of every full handshake), since edges trust exactly that CA.  A server
  certificate signed by an intermediate would need the chain configured
  explicitly (then OpenSSL sends it).
- A clear log line for each refused handshake.  OpenSSL only says "certificate
  verify failed"; the verify callback installed here records *which*
  certificate failed and why (expired, unknown CA...), keyed by connection, so
  the protocol can log it when the connection is lost.
- Only certificates of the project CA are trusted (``caCerts=[ca]``; the system
  trust store is never consulted) and a client certificate is required.

Tests: tests/system/test_certificates.py, tests/cloud/test_cloud_server.py.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

# The X.509 verification results an operator meets in practice (openssl's x509_vfy.h).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate (not signed by the project CA)",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def verify_error_text(errno: int) -> str:
    return _VERIFY_ERRORS.get(errno, f"X.509 verify error {errno}")


def ssl_error_text(value: Any) -> str:
    """OpenSSL's error list ([(lib, func, reason), ...]) as one readable string."""
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        reasons = [str(item[2]) for item in value.args[0] if len(item) >= 3 and item[2]]
        if reasons:
            return "; ".join(reasons)
    return str(value) or type(value).__name__


#: OpenSSL's SSL_MODE_NO_AUTO_CHAIN (ssl.h); the bindings do not name it.
_MODE_NO_AUTO_CHAIN = 0x00000008

#: How long an edge may resume its TLS session, seconds.
SESSION_LIFETIME = 86400
RESUMPTION_MODES = ("cache", "tickets")

#: Key-exchange groups offered by default: classical only.  A post-quantum hybrid
#: (X25519MLKEM768) adds about 2.3 KB to every full or resumed handshake, in both
#: directions, which a metered cellular link pays on each reconnect; an operator who
#: wants it puts it first in ``tls_groups``.
DEFAULT_GROUPS = "X25519:P-256"


def set_groups(target: SSL.Context | SSL.Connection, groups: str) -> bool:
    """Restrict the TLS key-exchange groups (colon-separated names) of a context or connection.

    pyOpenSSL has no public call for it; the binding underneath has
    SSL_CTX_set1_curves_list / SSL_set1_curves_list (the same as ..._groups_list).
    Returns False when the binding lacks them; raises ValueError for unknown names.
    """
    from OpenSSL._util import lib

    if isinstance(target, SSL.Context):
        call, handle = getattr(lib, "SSL_CTX_set1_curves_list", None), target._context
    else:
        call, handle = getattr(lib, "SSL_set1_curves_list", None), target._ssl
    if call is None:
        return False
    if call(handle, groups.encode("ascii")) != 1:
        raise ValueError(f"unknown TLS group in {groups!r}")
    return True


def tolerate_cuts(target: SSL.Context | SSL.Connection) -> None:
    """Treat a connection cut without close_notify as closed, not as an attack.

    Without this, OpenSSL answers the end of a cut connection with a fatal
    error, which also evicts the session from the cache: the very reconnection
    that resumption is for would pay a full handshake.  gridwire is framed and
    acknowledged, so a truncated stream cannot pass for a complete one.  A
    Connection is set through the binding (pyOpenSSL only sets Context options,
    and refuses once the Context has made a connection).
    """
    if isinstance(target, SSL.Context):
        target.set_options(SSL.OP_IGNORE_UNEXPECTED_EOF)
        return
    from OpenSSL._util import lib

    lib.SSL_set_options(target._ssl, SSL.OP_IGNORE_UNEXPECTED_EOF)


def keep_session_resumable(connection: SSL.Connection | None) -> None:
    """After a TLS 1.3 or 1.2 connection ends without close_notify, keep its session resumable.

    OpenSSL treats a session whose connection was not shut down cleanly as
    "bad" when the SSL object is freed: it drops it from the server's session
    cache and marks it not resumable, a rule from SSL 3 against truncation
    attacks.  TLS 1.3 dropped it (RFC 8446, section 6.1), and so did TLS 1.1 and
    1.2 (RFC 5246, section 7.2.1: a connection closed without close_notify no
    longer forbids resuming its session); TLS 1.2 matters because units may choose
    it for its smaller resumption (``[uplink] tls_version``).  A cut connection is
    exactly when an edge needs to resume, so the connection is marked as shut down
    before it is freed.  Called from the server's connectionLost; it matters when
    the server aborts (an edge's cut is handled by tolerate_cuts).  Edges keep
    their session their own way (gridedge.uplink.tls.ResumingCreator).
    """
    if connection is None or connection.get_protocol_version_name() not in ("TLSv1.3",
                                                                             "TLSv1.2"):
        return
    connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)


def _subject(cert: crypto.X509) -> str:
    return cert.to_cryptography().subject.rfc4514_string()


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates the OpenSSL connection for each accepted socket and remembers verify failures."""

    def __init__(
        self,
        options: ssl.CertificateOptions,
        groups: str = DEFAULT_GROUPS,
        session_lifetime: int = SESSION_LIFETIME,
    ) -> None:
        self._options = options
        self._failures: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        context = options.getContext()
        set_groups(context, groups)
        tolerate_cuts(context)
        # Edges reconnect after outages of hours; OpenSSL's default (300 s) would
        # make most reconnections pay a full handshake.
        context.set_timeout(session_lifetime)
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
            self._verify,
        )

    @classmethod
    def from_files(
        cls,
        cert: Path,
        key: Path,
        ca: Path,
        *,
        groups: str = DEFAULT_GROUPS,
        resumption: str = "cache",
        session_lifetime: int = SESSION_LIFETIME,
        intermediates: Path | None = None,
    ) -> ServerTLS:
        """Mutual-TLS server options from PEM files (server cert, its key, the project CA).

        ``resumption``: "cache" keeps sessions in this process and hands edges a
        small ticket that names them; "tickets" hands edges the whole session
        encrypted (no server memory, but each ticket carries the client
        certificate, about 1.4 KB more per reconnection).  Neither survives a
        restart or moves between cloud nodes (the keys are per process).

        ``intermediates``: a PEM file of issuing CAs under the project CA (renewal's
        issuing CA); they join the trust store, so an edge certificate one of them
        signed is verified up to the project CA without the edge sending the chain
        (about 450 bytes less in every full handshake).  The project CA stays the
        only anchor: OpenSSL still requires the chain to end at it.
        """
        if resumption not in RESUMPTION_MODES:
            raise ValueError(f"tls_resumption must be one of {', '.join(RESUMPTION_MODES)}")
        server = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]
            cert.read_bytes() + b"\n" + key.read_bytes()
        )
        authority = ssl.Certificate.loadPEM(ca.read_bytes())
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original,
            certificate=server.original,
            verify=True,
            caCerts=[authority.original],
            requireCertificate=True,
            enableSessions=resumption == "cache",
            enableSessionTickets=resumption == "tickets",
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        if intermediates is not None:
            store = options.getContext().get_cert_store()
            assert store is not None
            for extra in x509.load_pem_x509_certificates(intermediates.read_bytes()):
                store.add_cert(crypto.X509.from_cryptography(extra))
        return cls(options, groups, session_lifetime)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        # Built here: CertificateOptions makes connections itself only from Twisted 25 on,
        # and the edge's tests run this server on the unit's Twisted 24.11 (make test-unit-libs).
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        from OpenSSL._util import lib

        lib.SSL_set_mode(connection._ssl, _MODE_NO_AUTO_CHAIN)
        return connection

    def _verify(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            self._failures[connection.get_app_data()] = (
                f"{verify_error_text(errno)} (certificate {_subject(cert)!r}, depth {depth})"
            )
        return bool(ok)

    def failure_for(self, tls_protocol: Any) -> str | None:
        """Why verification of this connection's client certificate failed, if it did."""
        return self._failures.get(tls_protocol)


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the handshake resumed a session, for the handshake metrics (pyOpenSSL has no
    public call; the edge has the same few lines in gridedge.uplink.tls, and gridcloud does not
    import the edge application)."""
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(connection._ssl))
