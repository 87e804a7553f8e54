"""gridcloud.pki and `gridcloud pki`: files, permissions, identities, validity."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gridcloud import pki
from gridcloud.cli import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_creates_ca_server_and_edge_files_with_private_keys_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pki init/server/edge` write the documented files, keys 0600, and never print a key."""
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    assert (
        main(
            [
                "pki",
                "server",
                "--dir",
                str(d),
                "--name",
                "cloud.example.net",
                "--name",
                "cloud2.example.net",
            ]
        )
        == 0
    )
    out = tmp_path / "tls"
    assert main(["pki", "edge", "--dir", str(d), "--edge-id", "edge-007", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PRIVATE KEY" not in printed
    assert "edge-007" in printed

    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "edge.key", "edge.pem"]
    for key in (d / "ca.key", d / "server.key", out / "edge.key"):
        assert mode(key) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()
        assert key.read_bytes().decode() not in printed
    assert mode(d) == 0o700
    assert (out / "ca.pem").read_bytes() == (d / "ca.pem").read_bytes()


def test_edge_certificate_names_the_edge_and_chains_to_the_ca(tmp_path: Path) -> None:
    """An edge certificate names the edge (CN and SAN URI), is a client cert, signed by the CA."""
    folder = pki.PKIDirectory(tmp_path / "pki")
    ca = folder.init()
    _, target = folder.edge("edge-42")
    cert = x509.load_pem_x509_certificate((target / "edge.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-42"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["gridedge:edge/edge-42"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.certificate)
    assert pki.edge_id_from_certificate(cert) == "edge-42"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert target == tmp_path / "pki" / "edges" / "edge-42"


def test_server_certificate_lists_every_dns_name(tmp_path: Path) -> None:
    """A server certificate is a TLS server cert whose SAN holds each --name."""
    folder = pki.PKIDirectory(tmp_path)
    ca = folder.init()
    issued = folder.server(["a.example.net", "b.example.net"])
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.net", "b.example.net"]
    eku = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    issued.certificate.verify_directly_issued_by(ca.certificate)


def test_ca_is_limited_to_signing_end_entities(tmp_path: Path) -> None:
    """The CA has basicConstraints CA:true with path length 0 (it cannot mint sub-CAs)."""
    ca = pki.make_ca()
    bc = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 1


def test_days_sets_validity_and_now_makes_expired_certificates() -> None:
    """--days sets not-after; a past `now` yields a certificate that is already expired."""
    ca = pki.make_ca()
    fresh = pki.issue_edge(ca, "e1", days=10)
    span = fresh.certificate.not_valid_after_utc - fresh.certificate.not_valid_before_utc
    assert span == datetime.timedelta(days=10)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=20)
    old = pki.issue_edge(ca, "e1", days=10, now=past)
    assert old.certificate.not_valid_after_utc < datetime.datetime.now(datetime.UTC)


def test_refuses_to_replace_a_ca_or_an_edge_key(tmp_path: Path, capsys) -> None:
    """A second init and a second edge issue (without --force) fail with a clear message."""
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    ca_before = (d / "ca.key").read_bytes()
    assert main(["pki", "init", "--dir", str(d)]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert (d / "ca.key").read_bytes() == ca_before
    assert main(["pki", "edge", "--dir", str(d), "--edge-id", "e1"]) == 0
    assert main(["pki", "edge", "--dir", str(d), "--edge-id", "e1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["pki", "edge", "--dir", str(d), "--edge-id", "e1", "--force"]) == 0


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path: Path, capsys) -> None:
    """`pki edge` on an empty folder exits 2 and names `gridcloud pki init`."""
    assert main(["pki", "edge", "--dir", str(tmp_path), "--edge-id", "e1"]) == 2
    assert "gridcloud pki init" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["", "-lead", "has space", "x" * 65, "a/b", "é"])
def test_invalid_edge_ids_are_refused(bad: str) -> None:
    """Edge ids are 1-64 of [A-Za-z0-9._-], starting alphanumeric; others are refused."""
    with pytest.raises(pki.PKIError):
        pki.issue_edge(pki.make_ca(), bad)


def test_identity_falls_back_to_cn_and_rejects_certificates_without_one() -> None:
    """Without a SAN URI the CN is the identity; an invalid CN is an error, not an identity."""
    ca = pki.make_ca()
    server = pki.issue_server(ca, ["edge-9"])  # a certificate whose only edge-like name is its CN
    assert pki.edge_id_from_certificate(server.certificate) == "edge-9"
    weird = pki.issue_server(ca, ["bad name with spaces"])
    with pytest.raises(pki.PKIError):
        pki.edge_id_from_certificate(weird.certificate)
