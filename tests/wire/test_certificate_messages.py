"""CertificateRequest (0x80) and CertificateIssued (0x81): validation, state rules, and a peer
that predates them skipping them (they are optional types)."""

from __future__ import annotations

import pytest
from gridwire import (
    CertificateIssued,
    CertificateRequest,
    CloudSession,
    EdgeSession,
    ErrorCode,
    Hello,
    Ping,
    ProtocolError,
    Welcome,
    _messages,
)
from gridwire._codec import encode_message


def ready_pair() -> tuple[EdgeSession, CloudSession]:
    edge, cloud = EdgeSession(), CloudSession()
    cloud.receive_data(edge.send(Hello(min_version=1, max_version=2, firmware_version="1",
                                       boot_slot="A")))
    edge.receive_data(cloud.send(Welcome(version=2, server_time=1, last_acked_seq=0)))
    return edge, cloud


def test_request_and_answer_travel_in_ready() -> None:
    """The edge asks, the cloud answers; both sides decode exactly what was sent."""
    edge, cloud = ready_pair()
    request = CertificateRequest(csr=b"\x30\x81" + bytes(200))
    assert cloud.receive_data(edge.send(request)) == [request]
    issued = CertificateIssued(certificate=b"\x30" * 500, issuer=b"\x31" * 480)
    assert edge.receive_data(cloud.send(issued)) == [issued]


def test_wrong_direction_and_before_ready_are_refused() -> None:
    """Only the edge requests and only the cloud answers, and only after Welcome."""
    edge, cloud = ready_pair()
    with pytest.raises(ProtocolError) as exc:
        cloud.send(CertificateRequest(csr=b"x"))
    assert exc.value.code is ErrorCode.UNEXPECTED_MESSAGE
    with pytest.raises(ProtocolError):
        edge.send(CertificateIssued(detail="no"))
    early = CloudSession()
    with pytest.raises(ProtocolError) as exc:
        early.receive_data(encode_message(CertificateRequest(csr=b"x")))
    assert exc.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_invalid_fields_cannot_be_built() -> None:
    """An empty CSR, a certificate without its issuer, or oversized blobs are refused."""
    for bad in (dict(csr=b""), dict(csr=bytes(2049))):
        with pytest.raises(ProtocolError):
            CertificateRequest(**bad)  # type: ignore[arg-type]
    for kw in (dict(certificate=b"x"), dict(issuer=b"x"),
               dict(certificate=bytes(4097), issuer=b"x")):
        with pytest.raises(ProtocolError):
            CertificateIssued(**kw)  # type: ignore[arg-type]


def test_a_peer_that_predates_them_skips_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 0x80/0x81 unknown (a v1 or v2 peer of before), the frames are skipped, counted,
    and the session carries on: the optional bit is what makes renewal safe to deploy."""
    edge, cloud = ready_pair()
    request = edge.send(CertificateRequest(csr=b"\x30" * 64))
    ping = edge.send(Ping(nonce=3))
    for code in (0x80, 0x81):
        monkeypatch.delitem(_messages.MESSAGE_CLASSES, code)
    assert cloud.receive_data(request + ping) == [Ping(nonce=3)]
    assert cloud.skipped == 1
