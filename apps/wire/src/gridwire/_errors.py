"""The one error type of gridwire, and the codes carried in ``Error`` messages.

Why one type: an adapter (the Twisted protocol on either side) needs exactly one
``except ProtocolError`` around every call into a session.  The ``side`` tells it
whose fault it was: ``REMOTE`` (the peer sent something malformed or out of
order: send ``Error(code=exc.code)`` and close) or ``LOCAL`` (our own code asked
for something the protocol forbids: a bug to log; the session is unusable too).

Tests: tests/wire/test_corpus.py (remote errors, by code), tests/wire/test_session.py,
tests/wire/test_messages.py, and every test that expects a ProtocolError.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "ProtocolError", "Side"]


class ErrorCode(enum.IntEnum):
    """Why a session failed; sent on the wire as an unsigned varint in ``Error``.

    Codes are stable: a second implementation must use the same numbers.  A
    receiver that does not know a code treats it like ``INTERNAL_ERROR``.
    """

    MALFORMED_FRAME = 1  #: bad varint, truncated body, bytes left over
    FRAME_TOO_LARGE = 2  #: declared length above Limits.max_frame_size
    UNKNOWN_MESSAGE = 3  #: unknown message type without the "optional" bit
    UNSUPPORTED_EXTENSION = 4  #: unknown extension field with the "critical" bit
    INVALID_FIELD = 5  #: a field out of its range, bad UTF-8, string too long
    BAD_BATCH = 6  #: a reading batch whose column encoding is inconsistent
    BATCH_TOO_LARGE = 7  #: more records than Limits.max_batch_records
    UNEXPECTED_MESSAGE = 8  #: message not allowed for this role in this state
    UNSUPPORTED_VERSION = 9  #: no common protocol version
    SEQUENCE_ERROR = 10  #: sequence numbers not increasing, ack of unsent data
    FLOW_CONTROL = 11  #: more unacknowledged uploads than max_in_flight
    TIMEOUT = 12  #: the peer stayed silent beyond the heartbeat allowance
    UNAUTHORIZED = 13  #: the client certificate is unknown or revoked
    SHUTTING_DOWN = 14  #: the sender is going away; reconnect later
    INTERNAL_ERROR = 15  #: the sender failed; nothing the peer did wrong


class Side(enum.Enum):
    """Whose fault a ProtocolError is."""

    LOCAL = "local"  #: our own caller broke the rules (a bug on this side)
    REMOTE = "remote"  #: the peer sent bytes that break the rules


class ProtocolError(Exception):
    """Anything that breaks gridwire: malformed bytes or a message out of order.

    ``code`` is the ErrorCode to send to the peer, ``side`` says who broke the
    rules.  After a session raises this it is in state ERROR: the only safe
    things left are ``session.send(Error(...))`` (to tell the peer) and closing
    the connection.
    """

    def __init__(self, code: ErrorCode, message: str, side: Side = Side.REMOTE) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.side = side

    @property
    def remote(self) -> bool:
        """True when the peer broke the rules."""
        return self.side is Side.REMOTE

    @property
    def local(self) -> bool:
        """True when our own caller broke the rules."""
        return self.side is Side.LOCAL

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {str(self)!r}, side={self.side.value})"


def local_error(code: ErrorCode, message: str) -> ProtocolError:
    """A ProtocolError blaming our own caller (invalid argument, forbidden send)."""
    return ProtocolError(code, message, Side.LOCAL)
