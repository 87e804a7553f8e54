"""The cloud's side of renewal without a network: what check_request refuses, the issuing CA
made by `gridcloud pki issuing-ca`, and the server's configuration of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from gridcloud import pki
from gridcloud.cli import main
from gridcloud.config import ConfigError, ServerConfig
from gridcloud.renewal import RenewalRefused, check_request, key_fingerprint


def request(key: object, cn: str = "edge-1", uri: str | None = "gridedge:edge/edge-1") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(  # type: ignore[arg-type]
        serialization.Encoding.DER)


def test_a_good_request_passes_and_its_fingerprint_is_the_keys() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    one = check_request(request(key), "edge-1")
    two = check_request(request(key, cn="edge-1", uri=None), "edge-1")
    assert key_fingerprint(one) == key_fingerprint(two)


@pytest.mark.parametrize("case", ["garbage", "other edge", "p384", "rsa", "bad signature",
                                  "two edges"])
def test_requests_the_cloud_must_not_sign(case: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    if case == "garbage":
        der = b"\x30\x03abc"
    elif case == "other edge":
        der = request(key, "edge-2", "gridedge:edge/edge-2")
    elif case == "p384":
        der = request(ec.generate_private_key(ec.SECP384R1()))
    elif case == "rsa":
        der = request(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif case == "bad signature":
        raw = bytearray(request(key))
        raw[-3] ^= 0x01
        der = bytes(raw)
    else:
        der = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-1")]))
               .add_extension(x509.SubjectAlternativeName([
                   x509.UniformResourceIdentifier("gridedge:edge/edge-1"),
                   x509.UniformResourceIdentifier("gridedge:edge/edge-3")]), critical=False)
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    with pytest.raises(RenewalRefused):
        check_request(der, "edge-1")


def test_the_certificate_comes_from_the_connection_not_the_request(tmp_path: Path) -> None:
    """The signed certificate names the edge given, lives the days given, and chains to the
    project CA through the issuing CA, which may sign end entities only."""
    folder = pki.PKIDirectory(tmp_path)
    root = folder.init()
    issuing = folder.issuing_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_der_x509_csr(request(key))
    cert = pki.sign_edge_request(issuing, csr, "edge-1", days=0.01)
    assert pki.edge_id_from_certificate(cert) == "edge-1"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 860 + 300 - 5 < life.total_seconds() < 870 + 300
    cert.verify_directly_issued_by(issuing.certificate)
    issuing.certificate.verify_directly_issued_by(root.certificate)
    bc = issuing.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0


def test_an_old_ca_of_path_length_0_cannot_certify_an_issuing_ca(tmp_path: Path) -> None:
    old = pki.make_ca()
    builder = (x509.CertificateBuilder().subject_name(old.certificate.subject)
               .issuer_name(old.certificate.subject).public_key(old.key.public_key())
               .serial_number(1).not_valid_before(old.certificate.not_valid_before_utc)
               .not_valid_after(old.certificate.not_valid_after_utc)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True))
    legacy = pki.Issued(builder.sign(old.key, hashes.SHA256()), old.key)
    with pytest.raises(pki.PKIError, match="path length 0"):
        pki.make_issuing_ca(legacy)


def test_cli_makes_the_issuing_ca_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "init", "--dir", str(tmp_path)]) == 0
    assert main(["pki", "issuing-ca", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / pki.ISSUING_KEY).stat().st_mode & 0o777 == 0o600
    assert main(["pki", "issuing-ca", "--dir", str(tmp_path)]) == 2
    assert "already holds an issuing CA" in capsys.readouterr().err
    assert main(["pki", "issuing-ca", "--dir", str(tmp_path), "--replace"]) == 0


def test_config_needs_both_issuing_files() -> None:
    base = ServerConfig(cert=Path("c"), key=Path("k"), ca=Path("a"), dsn="x")
    with pytest.raises(ConfigError, match="go together"):
        base.with_overrides(issuing_ca_cert=Path("i.pem")).validate()
    with pytest.raises(ConfigError, match="certificate_days"):
        base.with_overrides(certificate_days=0.0).validate()
