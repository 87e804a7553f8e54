"""Real TLS 1.3 byte counting for the wire benchmark (ssl.MemoryBIO, no sockets).

Every application write goes through a real TLS 1.3 connection with mutual
authentication (ECDSA P-256 certificates from a throwaway CA made here, in
memory), so handshakes, session tickets, resumption and per-record overhead
(5-byte header, 1-byte inner content type, 16-byte AEAD tag) are what OpenSSL
really produces, not a formula.  TCP/IP headers are not counted.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER_NAME = "cloud.gridedge.test"


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, issuer_key, ca: bool
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


class TlsPair:
    """A server and a client SSLContext that trust one throwaway CA (mutual TLS 1.3)."""

    def __init__(self) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("gridedge test CA", ca_key, None, None, ca=True)
        self._dir = tempfile.TemporaryDirectory(prefix="bench-wire-tls-")
        folder = Path(self._dir.name)
        pem = serialization.Encoding.PEM
        (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
        for role, subject in (("server", SERVER_NAME), ("client", "edge-0001")):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _cert(subject, key, ca.subject, ca_key, ca=False)
            (folder / f"{role}.pem").write_bytes(
                cert.public_bytes(pem)
                + key.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.minimum_version = ssl.TLSVersion.TLSv1_3
        self.server.load_cert_chain(folder / "server.pem")
        self.server.load_verify_locations(folder / "ca.pem")
        self.server.verify_mode = ssl.CERT_REQUIRED
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.minimum_version = ssl.TLSVersion.TLSv1_3
        self.client.load_cert_chain(folder / "client.pem")
        self.client.load_verify_locations(folder / "ca.pem")
        self._dir.cleanup()


class TlsConnection:
    """One TLS 1.3 connection whose wire bytes are counted in both directions."""

    def __init__(self, pair: TlsPair, session: ssl.SSLSession | None = None) -> None:
        self._c_in, self._c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._s_in, self._s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = pair.client.wrap_bio(
            self._c_in, self._c_out, server_hostname=SERVER_NAME, session=session
        )
        self.server = pair.server.wrap_bio(self._s_in, self._s_out, server_side=True)
        self.up = 0  # client -> server bytes on the wire
        self.down = 0  # server -> client
        self._handshake()
        self.handshake_bytes = self.up + self.down
        self.resumed = self.client.session_reused

    def _pump(self) -> None:
        while True:
            moved = False
            data = self._c_out.read()
            if data:
                self.up += len(data)
                self._s_in.write(data)
                moved = True
            data = self._s_out.read()
            if data:
                self.down += len(data)
                self._c_in.write(data)
                moved = True
            if not moved:
                return

    def _handshake(self) -> None:
        done = {"c": False, "s": False}
        while not all(done.values()):
            for key, side in (("c", self.client), ("s", self.server)):
                if not done[key]:
                    try:
                        side.do_handshake()
                        done[key] = True
                    except ssl.SSLWantReadError:
                        pass
            self._pump()
        # session tickets travel after the handshake; read them so resumption works
        self._drain(self.client)
        self._drain(self.server)

    @staticmethod
    def _drain(side: ssl.SSLObject) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = side.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def send_up(self, data: bytes) -> bytes:
        """Client writes ``data`` (one TLS write); returns what the server application reads."""
        self.client.write(data)
        self._pump()
        return self._drain(self.server)

    def send_down(self, data: bytes) -> bytes:
        """Server writes ``data`` (one TLS write); returns what the client application reads."""
        self.server.write(data)
        self._pump()
        return self._drain(self.client)

    @property
    def session(self) -> ssl.SSLSession | None:
        """The client's session, for resuming the next connection."""
        return self.client.session
