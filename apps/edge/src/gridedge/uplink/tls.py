"""Mutual TLS for the uplink, with TLS 1.3 session resumption across reconnects.

Why resumption: the unit reconnects often (cellular drops, NAT timeouts) and
every byte is paid for.  A full TLS 1.3 handshake with client authentication
carries both certificate chains and signatures; a resumed one (PSK from a
session ticket) carries neither.  ``tests/edge/test_uplink_tls.py`` measures
the difference on the wire.

How: ``optionsForClientTLS`` builds the connection as usual (trust only the
project CA, check the server name with service_identity, present the device
certificate: :meth:`ResumingCreator.for_device`); :class:`ResumingCreator`
wraps any such client options, hands the session kept from
the previous connection to ``set_session()`` before the handshake, and keeps
``get_session()`` once application data has arrived (in TLS 1.3 the ticket
arrives after the handshake, so not earlier).  The client side is the same
for both of gridcloud's ``tls_resumption`` modes: in TLS 1.3 the server always
sends a ticket, either a short one naming a session in its cache ("cache",
the default, which sets ``OP_IGNORE_UNEXPECTED_EOF`` so that a cut connection
stays resumable) or a stateless one carrying the whole session ("tickets").

The catch, found while testing cuts: when a connection ends without a TLS
close_notify (a cut, exactly the case resumption is for), OpenSSL marks that
connection's SSL_SESSION "not resumable", and since pyOpenSSL hands out the
very same object, the kept session is spoiled.  So the session is kept as its
DER serialisation and a fresh SSL_SESSION is made from it for each connection
(OpenSSL's i2d/d2i_SSL_SESSION, reached through pyOpenSSL's bindings as
pyOpenSSL has no public call for them).  This one fix serves every client in
the repository: the uplink and the load generator (gridedge.loadgen) that the
cloud's tests and bench/bench_ingest.py use.

Tests: tests/edge/test_uplink_tls.py, tests/cloud/test_cloud_server.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

CERT_FILE = "edge.pem"
KEY_FILE = "edge.key"
CA_FILE = "ca.pem"


class TLSFilesError(Exception):
    """The device certificate, key or CA is missing or unreadable; the message says which."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The files the unit keeps in its data directory's tls/ folder, loaded."""

    certificate: ssl.PrivateCertificate
    ca: ssl.Certificate

    @classmethod
    def load(cls, tls_dir: Path) -> DeviceIdentity:
        """Load edge.pem, edge.key and ca.pem from ``tls_dir`` (as `gridcloud pki edge` writes)."""
        texts = {}
        for name in (CERT_FILE, KEY_FILE, CA_FILE):
            path = tls_dir / name
            try:
                texts[name] = path.read_bytes()
            except FileNotFoundError:
                raise TLSFilesError(
                    f"{path} is missing: provision the unit with "
                    f"'gridcloud pki edge --dir PKI --edge-id ID --out {tls_dir}'"
                ) from None
            except OSError as exc:
                raise TLSFilesError(f"cannot read {path}: {exc}") from None
        try:
            cert = ssl.PrivateCertificate.loadPEM(texts[CERT_FILE] + texts[KEY_FILE])  # type: ignore[no-untyped-call]
            ca = ssl.Certificate.loadPEM(texts[CA_FILE])
        except Exception as exc:  # pyOpenSSL raises its own Error types
            raise TLSFilesError(f"bad certificate or key in {tls_dir}: {exc}") from None
        return cls(cert, ca)


def session_to_der(session: SSL.Session) -> bytes:
    """OpenSSL's serialised form of a session (ticket and secrets included: keep in memory)."""
    from OpenSSL._util import ffi, lib

    size = lib.i2d_SSL_SESSION(session._session, ffi.NULL)
    if size <= 0:
        return b""
    buf = ffi.new("unsigned char[]", size)
    cursor = ffi.new("unsigned char **", buf)
    lib.i2d_SSL_SESSION(session._session, cursor)
    return bytes(ffi.buffer(buf, size))


def session_from_der(der: bytes, context: SSL.Context) -> SSL.Session | None:
    """A new, independent session object from :func:`session_to_der` output, for
    connections of ``context`` (pyOpenSSL pins a session to its context)."""
    from OpenSSL._util import ffi, lib

    buf = ffi.new("unsigned char[]", der)
    cursor = ffi.new("unsigned char **", buf)
    pointer = lib.d2i_SSL_SESSION(ffi.NULL, cursor, len(der))
    if pointer == ffi.NULL:
        return None
    session = SSL.Session.__new__(SSL.Session)
    session._session = ffi.gc(pointer, lib.SSL_SESSION_free)
    session._context = context
    return session


#: Key-exchange groups offered: classical only.  OpenSSL's default list starts with the
#: post-quantum hybrid X25519MLKEM768, whose key share adds about 1.2 KB to every
#: ClientHello (and as much to the answer): paid on each reconnect of a metered link.
DEFAULT_GROUPS = "X25519:P-256"


def set_groups(connection: SSL.Connection, groups: str) -> bool:
    """Restrict the key-exchange groups of one connection; False if this binding cannot.

    pyOpenSSL has no public call for it (``Context.set_tmp_ecdh`` takes one EC curve, so no
    X25519, and only before the context makes a connection); the binding underneath has
    SSL_set1_groups_list under its old name SSL_set1_curves_list, but not in every
    release: cryptography 44, the one Buildroot 2025.02 ships (board/qemu-ci/unit-python.txt),
    lacks it. Without it the connection keeps OpenSSL's default groups, which every server
    accepts: the restriction saves bytes, it is not what makes the connection secure.
    Raises ValueError for unknown names.
    """
    from OpenSSL._util import lib

    call = getattr(lib, "SSL_set1_curves_list", None)
    if call is None:
        return False
    if call(connection._ssl, groups.encode("ascii")) != 1:
        raise ValueError(f"unknown TLS group in {groups!r}")
    return True


#: OpenSSL's SSL_MODE_NO_AUTO_CHAIN (ssl.h); the bindings do not name it.
MODE_NO_AUTO_CHAIN = 0x00000008


#: The one TLS 1.2 suite the unit offers with ``tls_version = "1.2"``: ECDHE (forward secrecy
#: for full handshakes), the project PKI's ECDSA, AES-128-GCM.
TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


def tls12_only(connection: SSL.Connection) -> bool:
    """Make the connection speak TLS 1.2 only, resuming by session id (``[uplink]
    tls_version = "1.2"``); False when the binding lacks a call (then TLS 1.3 stays).

    Why offer it: a TLS 1.2 resumption is ClientHello, ServerHello, two ChangeCipherSpec
    and two Finished, about 350 bytes; a TLS 1.3 one adds a key exchange, and OpenSSL adds
    a session ticket and middlebox-compatibility records that the bindings cannot turn off
    (about 650 bytes).  What it costs: a resumed TLS 1.2 connection derives its keys from
    the cached master secret without a new key exchange (no forward secrecy per resumed
    connection, for the session lifetime), and in full handshakes the unit's certificate
    (its edge id) travels in clear.  So it is not the default."""
    from OpenSSL._util import lib

    set_options = getattr(lib, "SSL_set_options", None)
    no_tls13 = getattr(lib, "SSL_OP_NO_TLSv1_3", None)
    if set_options is None or no_tls13 is None:
        return False
    set_options(connection._ssl, no_tls13)
    return True


def trim_handshake(connection: SSL.Connection, tls12: bool = False) -> None:
    """Leave out of the handshake what this project's TLS never needs, for its bytes.

    * No certificate chain: without explicit chain certificates OpenSSL builds one from the
      trust store and sends the CA's certificate after the device certificate (about 430
      bytes of every full handshake); the cloud trusts exactly that CA already.  The cloud's
      side does the same (gridcloud.tls).
    * TLS 1.3 only: the cloud speaks it, and a ClientHello that also offers TLS 1.2 lists
      its cipher suites and extensions (about 90 bytes of every handshake, resumed or not).
    Both through SSL_set_mode/SSL_set_options; should a binding lack one, the connection
    keeps OpenSSL's default (bigger, equally secure).
    """
    from OpenSSL._util import lib

    set_mode = getattr(lib, "SSL_set_mode", None)
    if set_mode is not None:
        set_mode(connection._ssl, MODE_NO_AUTO_CHAIN)
    if tls12 and tls12_only(connection):
        return
    set_options, no_tls12 = getattr(lib, "SSL_set_options", None), getattr(
        lib, "SSL_OP_NO_TLSv1_2", None)
    if set_options is not None and no_tls12 is not None:
        set_options(connection._ssl, no_tls12)


#: TLS 1.3 suites the unit offers: both hash with SHA-256, so a resumed handshake's PSK
#: binder and both Finished messages are 32 bytes instead of the 48 of OpenSSL's first
#: choice (TLS_AES_256_GCM_SHA384): about 50 bytes of every handshake.  AES-128-GCM is
#: TLS 1.3's mandatory suite; ChaCha20-Poly1305 is there for servers that prefer it on
#: CPUs without AES instructions (like the unit's).
CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
#: Signature algorithms the unit accepts: the project PKI's ECDSA P-256 (and P-384), and
#: for a cloud with an RSA certificate RSA-PSS (its handshake signature) and PKCS#1 v1.5
#: with SHA-256 (what CAs sign RSA certificates with); OpenSSL's default list is about 30
#: (about 35 bytes more in every ClientHello).
SIGALGS = "ECDSA+SHA256:ECDSA+SHA384:rsa_pss_rsae_sha256:rsa_pss_pss_sha256:RSA+SHA256"


def trim_offers(context: SSL.Context) -> bool:
    """Offer only CIPHERSUITES (TLS12_CIPHERS in TLS 1.2) and SIGALGS in the ClientHellos
    of ``context``'s next connections; False when the binding lacks one of the calls (the
    defaults stay: bigger, equally secure).  Through the binding: pyOpenSSL refuses to
    change a context that has made a connection, and Twisted builds the context out of
    reach, so the only handle on it is a connection's ``get_context()``."""
    from OpenSSL._util import lib

    suites = getattr(lib, "SSL_CTX_set_ciphersuites", None)
    sigalgs = getattr(lib, "SSL_CTX_set1_sigalgs_list", None)
    ciphers = getattr(lib, "SSL_CTX_set_cipher_list", None)
    if suites is None or sigalgs is None or ciphers is None:
        return False
    handle = context._context
    return bool(suites(handle, CIPHERSUITES.encode()) == 1
                and ciphers(handle, TLS12_CIPHERS.encode()) == 1
                and sigalgs(handle, SIGALGS.encode()) == 1)


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the handshake resumed a session (pyOpenSSL has no public call for this,
    so OpenSSL's SSL_session_reused is reached through pyOpenSSL's bindings)."""
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(connection._ssl))


@implementer(IOpenSSLClientConnectionCreator)
class ResumingCreator:
    """Client connections that resume the previous TLS session when the server allows it.

    ``inner`` makes each connection (``optionsForClientTLS``); this adds the
    key-exchange groups and the kept session.  Call :meth:`remember` once
    application data has arrived on a connection.
    """

    def __init__(self, inner: IOpenSSLClientConnectionCreator,
                 groups: str = DEFAULT_GROUPS, tls12: bool = False) -> None:
        self.groups = groups
        #: TLS 1.2 with session-id resumption instead of TLS 1.3 (see tls12_only)
        self.tls12 = tls12
        self._inner = inner
        self._session: bytes | None = None
        self._trimmed = False
        self.full_handshakes = 0
        self.resumed_handshakes = 0

    @classmethod
    def for_device(cls, server_name: str, identity: DeviceIdentity,
                   groups: str = DEFAULT_GROUPS, tls12: bool = False) -> ResumingCreator:
        """Mutual TLS as the unit does it: trust only the project CA, check ``server_name``,
        present the device certificate."""
        return cls(ssl.optionsForClientTLS(server_name, trustRoot=identity.ca,
                                           clientCertificate=identity.certificate), groups,
                   tls12)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._inner.clientConnectionForTLS(tlsProtocol)
        if not self._trimmed:  # once: the context reached through its first connection
            self._trimmed = True
            if trim_offers(connection.get_context()):
                connection = self._inner.clientConnectionForTLS(tlsProtocol)
        if self.groups:
            set_groups(connection, self.groups)
        trim_handshake(connection, self.tls12)
        if self._session:
            session = session_from_der(self._session, connection.get_context())
            if session is not None:
                connection.set_session(session)
        return connection

    def remember(self, connection: SSL.Connection) -> bool:
        """Keep this connection's session for the next one; returns whether it was resumed."""
        resumed = session_reused(connection)
        if resumed:
            self.resumed_handshakes += 1
        else:
            self.full_handshakes += 1
        session = connection.get_session()
        if session is not None:
            self._session = session_to_der(session)
        return resumed

    def forget(self) -> None:
        """Drop the kept session (e.g. after the server refused us)."""
        self._session = None
