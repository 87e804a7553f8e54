"""Limits a receiver enforces before it allocates anything, and protocol constants.

Why configurable: the edge (a BeagleBone with 512 MiB shared by everything) and
the cloud (thousands of connections per node) want different bounds; both sides
default to the same values, which are also the values the docs quote.

Tests: tests/wire/test_messages.py (validation), tests/wire/test_codec.py (frame size),
tests/wire/test_batch.py (records per batch), tests/wire/test_docs.py (documented values).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import ErrorCode, local_error

__all__ = [
    "MAX_BOOT_SLOT",
    "MAX_CERTIFICATE",
    "MAX_CSR",
    "MAX_FIRMWARE_VERSION",
    "MAX_HANDSHAKE_FRAME",
    "MAX_HANDSHAKE_FRAMES",
    "MAX_TEXT",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Limits",
]

#: The highest protocol version this implementation speaks.
PROTOCOL_VERSION = 3
#: Every version this implementation can speak (a contiguous range).
SUPPORTED_VERSIONS = range(1, PROTOCOL_VERSION + 1)
#: Absolute bound on any UTF-8 text field, in bytes (validated on construction).
MAX_TEXT = 255
#: Bound on a firmware version string (Hello, FirmwareOffer), in bytes of UTF-8.
MAX_FIRMWARE_VERSION = 64
#: Bound on Hello.boot_slot (a slot name such as "A"), in bytes of UTF-8.
MAX_BOOT_SLOT = 8
#: Absolute bound on a command payload, in bytes.
MAX_PAYLOAD = 4096
#: Bound on CertificateRequest.csr (a PKCS#10 request in DER; an EC P-256 one is ~250 bytes).
MAX_CSR = 2048
#: Bound on each certificate of CertificateIssued (DER; an EC P-256 one is ~500 bytes).
MAX_CERTIFICATE = 4096
#: Absolute bound on one firmware chunk, in bytes.
MAX_CHUNK = 65536
#: Absolute upper bound for Limits.max_frame_size (the length prefix may use at most 3 bytes).
MAX_FRAME_CEILING = (1 << 21) - 1
#: Absolute upper bound for Limits.max_batch_records.
MAX_BATCH_CEILING = 65535
#: Longest frame a session accepts before its handshake is complete (Hello, Welcome, Error,
#: an unknown optional message): a peer not admitted yet cannot make it buffer max_frame_size.
MAX_HANDSHAKE_FRAME = 4096
#: Frames (skipped ones included) a session accepts before its handshake is complete.
MAX_HANDSHAKE_FRAMES = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What a session accepts from its peer; checked while decoding, before allocation.

    max_frame_size:    bytes of type + body in one frame (the length prefix's value).
    max_batch_records: records in one ReadingBatch (checked from its header).
    max_in_flight:     uploads (batches and event reports) sent but not yet acknowledged:
                       the cloud may not offer more in Welcome; the edge uses at most
                       this many even if the Welcome offers more.
    """

    max_frame_size: int = 256 * 1024
    max_batch_records: int = 8192
    max_in_flight: int = 16

    def __post_init__(self) -> None:
        if not 64 + MAX_CHUNK <= self.max_frame_size <= MAX_FRAME_CEILING:
            raise local_error(
                ErrorCode.INVALID_FIELD,
                f"max_frame_size must be in {64 + MAX_CHUNK}..{MAX_FRAME_CEILING}",
            )
        if not 1 <= self.max_batch_records <= MAX_BATCH_CEILING:
            raise local_error(
                ErrorCode.INVALID_FIELD, f"max_batch_records must be in 1..{MAX_BATCH_CEILING}"
            )
        if not 1 <= self.max_in_flight <= 65535:
            raise local_error(ErrorCode.INVALID_FIELD, "max_in_flight must be in 1..65535")
