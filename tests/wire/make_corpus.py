"""Regenerate tests/wire/corpus/: malformed inputs, each named for the error it must raise.

File names are ``<target>.<error_code>.<what>.bin``:
    frame  bytes fed to a FrameDecoder with default Limits
    cloud  bytes fed to a fresh CloudSession
    edge   bytes fed to an EdgeSession that has sent Hello(min_version=1, max_version=1)
tests/wire/test_corpus.py feeds every file whole and one byte at a time and
expects a remote ProtocolError with that code.  Run: .venv/bin/python tests/wire/make_corpus.py
"""

from __future__ import annotations

import zlib
from pathlib import Path

from gridwire import Ack, Hello, IntervalRecord, ReadingBatch, Welcome
from gridwire._codec import encode_message, frame
from gridwire._varint import uvarint, zigzag

HERE = Path(__file__).resolve().parent / "corpus"


def col(mode: int, width: int, base: int = 0, *extra: int) -> bytes:
    out = bytes([mode, width]) + uvarint(zigzag(base))
    for value in extra:
        out += uvarint(zigzag(value))
    return out


def batch(first_seq: int, count: int, codec: int, columns: list[bytes], data: bytes) -> bytes:
    body = uvarint(first_seq) + uvarint(count) + bytes([codec]) + b"".join(columns)
    return frame(0x03, body + uvarint(len(data)) + data)


ZERO_COLS = [col(0, 0)] * 8
HELLO = encode_message(Hello(min_version=1, max_version=1, firmware_version="1", boot_slot="A"))
RECORD = IntervalRecord(1, 900, 1000, 10, 2300, 100, 950, 0)

CASES: dict[str, bytes] = {
    "frame.MALFORMED_FRAME.empty-frame": b"\x00",
    "frame.MALFORMED_FRAME.non-minimal-length": b"\x82\x00\x08\x07",
    "frame.FRAME_TOO_LARGE.length-prefix-4-bytes": b"\x80\x80\x80\x01",
    "frame.FRAME_TOO_LARGE.length-above-limit": uvarint(262145) + b"\x08",
    "frame.UNKNOWN_MESSAGE.mandatory-type-0x42": b"\x01\x42",
    "frame.UNKNOWN_MESSAGE.type-zero": b"\x01\x00",
    "frame.MALFORMED_FRAME.field-varint-truncated": b"\x02\x08\x80",
    "frame.MALFORMED_FRAME.field-varint-non-minimal": b"\x03\x08\x80\x00",
    "frame.INVALID_FIELD.nonce-above-u32": b"\x06\x08\xff\xff\xff\xff\x7f",
    "frame.MALFORMED_FRAME.u64-varint-11-bytes": b"\x0c\x04" + b"\xff" * 10 + b"\x01",
    "frame.UNSUPPORTED_EXTENSION.critical-tag-1": b"\x04\x08\x00\x01\x00",
    "frame.MALFORMED_FRAME.extension-overruns-frame": b"\x04\x08\x00\x02\x05",
    "frame.INVALID_FIELD.text-not-utf8": b"\x05\x0e\x01\x02\xc3\x28",
    "frame.INVALID_FIELD.firmware-version-65-bytes": frame(
        0x01, b"\x01\x01" + uvarint(65) + b"v" * 65 + b"\x01A\x00\x00"
    ),
    "frame.INVALID_FIELD.hello-min-above-max": frame(0x01, b"\x02\x01\x011\x01A\x00\x00"),
    "frame.INVALID_FIELD.welcome-version-0": frame(0x02, b"\x00\x00\x00\x01\x01"),
    "frame.MALFORMED_FRAME.welcome-truncated": frame(0x02, b"\x01\x00\x00"),
    "frame.MALFORMED_FRAME.firmware-offer-sha256-short": frame(0x0A, b"\x01\x011\x0a" + bytes(31)),
    "frame.INVALID_FIELD.command-payload-4097-bytes": frame(
        0x06, b"\x01\x01\x00" + uvarint(4097) + bytes(4097)
    ),
    "frame.INVALID_FIELD.batch-first-seq-0": encode_message(
        ReadingBatch(first_seq=1, records=[RECORD])
    ).replace(b"\x03\x01\x01", b"\x03\x00\x01", 1),
    "frame.INVALID_FIELD.batch-seq-overflows-u64": batch(2**64 - 1, 2, 0, ZERO_COLS, b""),
    "frame.BAD_BATCH.zero-records": batch(1, 0, 0, ZERO_COLS, b""),
    "frame.BATCH_TOO_LARGE.9000-records": batch(1, 9000, 0, ZERO_COLS, b""),
    "frame.BAD_BATCH.unknown-codec": batch(1, 1, 2, ZERO_COLS, b""),
    "frame.BAD_BATCH.unknown-mode": batch(1, 1, 0, [bytes([3, 0, 0]), *ZERO_COLS[1:]], b""),
    "frame.BAD_BATCH.width-9": batch(1, 1, 0, [col(0, 9), *ZERO_COLS[1:]], b""),
    "frame.BAD_BATCH.meter-delta-on-meter-id": batch(
        1, 1, 0, [bytes([2, 0, 0, 0, 0]), *ZERO_COLS[1:]], b""
    ),
    "frame.BAD_BATCH.column-data-short": batch(1, 2, 0, [col(0, 1)] * 8, bytes(15)),
    "frame.BAD_BATCH.column-data-long": batch(1, 2, 0, [col(0, 1)] * 8, bytes(17)),
    "frame.BAD_BATCH.deflate-garbage": batch(1, 1, 1, ZERO_COLS, b"\x78\x9c\xff\xff"),
    "frame.BAD_BATCH.deflate-bomb-10MB": batch(
        1, 10, 1, [col(0, 1)] * 8, zlib.compress(bytes(10_000_000), 9)
    ),
    "frame.BAD_BATCH.deflate-trailing-bytes": batch(
        1, 1, 1, [col(0, 1)] * 8, zlib.compress(bytes(8)) + b"\x00"
    ),
    "frame.BAD_BATCH.deflate-truncated": batch(
        1, 1, 1, [col(0, 1)] * 8, zlib.compress(bytes(8))[:-3]
    ),
    "frame.INVALID_FIELD.voltage-above-u16": batch(
        1, 1, 0, [*ZERO_COLS[:4], col(0, 0, 70000), *ZERO_COLS[5:]], b""
    ),
    "frame.INVALID_FIELD.power-factor-below-minus-1000": batch(
        1, 1, 0, [*ZERO_COLS[:6], col(0, 0, -1001), *ZERO_COLS[7:]], b""
    ),
    "frame.INVALID_FIELD.delta-runs-below-zero": batch(
        1, 2, 0, [col(1, 0, -5, 3), *ZERO_COLS[1:]], b""
    ),
    "frame.MALFORMED_FRAME.batch-header-truncated": batch(1, 1, 0, ZERO_COLS[:3], b""),
    "cloud.UNEXPECTED_MESSAGE.batch-before-hello": encode_message(
        ReadingBatch(first_seq=1, records=[RECORD])
    ),
    "cloud.UNEXPECTED_MESSAGE.welcome-from-edge": encode_message(
        Welcome(version=1, server_time=0, last_acked_seq=0)
    ),
    "cloud.UNEXPECTED_MESSAGE.two-hellos": HELLO + HELLO,
    "cloud.UNEXPECTED_MESSAGE.ack-from-edge": HELLO + encode_message(Ack(up_to_seq=0)),
    "edge.UNEXPECTED_MESSAGE.ack-before-welcome": encode_message(Ack(up_to_seq=1)),
    "edge.UNSUPPORTED_VERSION.welcome-version-2": encode_message(
        Welcome(version=2, server_time=0, last_acked_seq=0)
    ),
    "edge.SEQUENCE_ERROR.ack-of-unsent-data": encode_message(
        Welcome(version=1, server_time=0, last_acked_seq=5)
    )
    + encode_message(Ack(up_to_seq=6)),
    "edge.UNEXPECTED_MESSAGE.batch-from-cloud": encode_message(
        Welcome(version=1, server_time=0, last_acked_seq=0)
    )
    + encode_message(ReadingBatch(first_seq=1, records=[RECORD])),
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for old in HERE.glob("*.bin"):
        old.unlink()
    for name, data in CASES.items():
        (HERE / f"{name}.bin").write_bytes(data)
    print(f"{len(CASES)} files in {HERE}")


if __name__ == "__main__":
    main()
