"""The manifest signed inside a RAUC bundle's CMS signature, read without trusting it yet.

Why parse the DER here: ``rauc info --output-format=json`` verifies the signature but does
not print the ``[bundle]`` verity values the unit needs to check chunks (rauc 1.8, measured),
so the unit reads the manifest from the CMS itself: ContentInfo -> SignedData ->
EncapsulatedContentInfo -> eContent, the manifest text.  Only what ``rauc info`` verified is
used: the agent parses the same bytes it handed to rauc, after rauc accepted them.

Tests: tests/edge/test_firmware_verity.py.
"""

from __future__ import annotations

import configparser
import struct
from dataclasses import dataclass

__all__ = ["Manifest", "ManifestError", "cms_span", "read_manifest"]


class ManifestError(ValueError):
    """The bundle's tail is not a CMS signature with a RAUC verity manifest inside."""


@dataclass(frozen=True, slots=True)
class Manifest:
    compatible: str
    version: str
    bundle_format: str
    verity_hash: bytes
    verity_salt: bytes
    verity_size: int


def cms_span(size: int, tail: bytes) -> tuple[int, int]:
    """(start, end) of the CMS in a bundle of ``size`` bytes, from its last 8 bytes."""
    (cms_size,) = struct.unpack(">Q", tail[-8:])
    if not 0 < cms_size <= size - 8:
        raise ManifestError(f"signature size {cms_size} does not fit a {size}-byte bundle")
    return size - 8 - cms_size, size - 8


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ManifestError("truncated DER")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise ManifestError("indefinite-length encoding (BER) is not supported")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > len(der):
            raise ManifestError("bad DER length")
        length = int.from_bytes(der[pos:pos + n], "big")
        pos += n
    if pos + length > len(der):
        raise ManifestError("truncated DER")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, cstart, cend = _tlv(der, start)
        out.append((tag, cstart, cend))
        start = cend
    return out


_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2


def econtent(der: bytes) -> bytes:
    """The encapsulated content of a CMS SignedData (DER)."""
    tag, start, end = _tlv(der, 0)
    content_info = _children(der, start, end)
    if tag != 0x30 or len(content_info) != 2 or der[content_info[0][1]:content_info[0][2]] \
            != _SIGNED_DATA or content_info[1][0] != 0xA0:
        raise ManifestError("not a CMS SignedData")
    (tag, start, end), = _children(der, content_info[1][1], content_info[1][2])
    signed = _children(der, start, end)
    if tag != 0x30 or len(signed) < 3 or signed[2][0] != 0x30:
        raise ManifestError("SignedData without encapsulated content")
    encap = _children(der, signed[2][1], signed[2][2])
    if len(encap) != 2 or encap[1][0] != 0xA0:
        raise ManifestError("detached signature: the manifest is not inline")
    (tag, start, end), = _children(der, encap[1][1], encap[1][2])
    if tag == 0x04:
        return der[start:end]
    if tag == 0x24:  # constructed OCTET STRING: the concatenation of its parts
        return b"".join(der[s:e] for t, s, e in _children(der, start, end) if t == 0x04)
    raise ManifestError("eContent is not an OCTET STRING")


def read_manifest(cms: bytes) -> Manifest:
    """The manifest inside ``cms``; ManifestError when it is not a verity bundle's."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(econtent(cms).decode("utf-8"))
        bundle = parser["bundle"]
        update = parser["update"]
        manifest = Manifest(
            compatible=update.get("compatible", ""),
            version=update.get("version", ""),
            bundle_format=bundle.get("format", "plain"),
            verity_hash=bytes.fromhex(bundle.get("verity-hash", "")),
            verity_salt=bytes.fromhex(bundle.get("verity-salt", "")),
            verity_size=int(bundle.get("verity-size", "0")),
        )
    except (UnicodeDecodeError, configparser.Error, KeyError, ValueError) as exc:
        raise ManifestError(f"unreadable manifest: {exc}") from None
    if manifest.bundle_format != "verity" or len(manifest.verity_hash) != 32 \
            or manifest.verity_size <= 0:
        raise ManifestError(f"not a verity bundle (format {manifest.bundle_format})")
    return manifest
