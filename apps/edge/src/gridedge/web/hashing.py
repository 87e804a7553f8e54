"""Password hashing (scrypt) off the reactor: each hash runs in a short-lived child process.

Why a child process: scrypt is slow and memory-hard on purpose (16 MiB and 0.05-0.25 s a hash
on the 2-core development machine, several times that on the BeagleBone's Cortex-A8).  Run on
the reactor's thread it would stop the unit for that long at every login: radio frames wait
in the UART's buffer, the uplink and the live pages stall.  The project runs no threads, so
the hash goes to a child (``reactor.spawnProcess``: Twisted's process API), which also
takes the 16 MiB out of gridedge's own heap.  The child is ``python3 -I -S`` with only hashlib:
its start costs tens of milliseconds here (measured in tests/edge/test_web_parts.py), small
beside the hash.  Password and salt go through the child's stdin, never its command line
(which any local user can read in /proc).  At most ``MAX_CHILDREN`` hash at once; more logins
wait their turn (the per-address login limit bounds how many can come).

:func:`inline_hash` is the same hash on the calling thread, for tests of the account rules.

Tests: tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = ["MAX_CHILDREN", "ChildHasher", "HashError", "Hasher", "inline_hash"]

#: scrypt cost: n=2**14, r=8 is 16 MiB per hash (RFC 7914's interactive-login figure).
N, R, P = 1 << 14, 8, 1
DKLEN = 32
MAX_CHILDREN = 2

#: (password, salt) -> Deferred firing with the 32-byte scrypt digest.
Hasher = Callable[[str, bytes], Deferred[bytes]]

_CHILD = (
    "import hashlib, sys\n"
    "salt, password = sys.stdin.buffer.read().split(b'\\n', 1)\n"
    f"print(hashlib.scrypt(password, salt=bytes.fromhex(salt.decode()), n={N}, r={R}, p={P},"
    f" maxmem=64 << 20, dklen={DKLEN}).hex())\n"
)


class HashError(Exception):
    """The hashing child failed (could not start, died, printed nonsense)."""


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=64 << 20,
                          dklen=DKLEN)


def inline_hash(password: str, salt: bytes) -> Deferred[bytes]:
    """The hash on this thread (tests; a tool with no reactor running)."""
    return succeed(_scrypt(password, salt))


class _Child(ProcessProtocol):
    def __init__(self, stdin: bytes, done: Deferred[bytes]) -> None:
        self.stdin = stdin
        self.done = done
        self.out = b""
        self.err = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out = (self.out + data)[-256:]

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-2000:]

    def processEnded(self, reason: Failure) -> None:
        text = self.out.strip()
        code = getattr(reason.value, "exitCode", None)
        if code == 0 and len(text) == 2 * DKLEN:
            try:
                self.done.callback(bytes.fromhex(text.decode("ascii")))
                return
            except ValueError:
                pass
        self.done.errback(HashError(
            f"password hashing child failed (exit {code}): "
            f"{self.err.decode(errors='replace').strip()[-300:]}"))


class ChildHasher:
    """A :data:`Hasher` that runs each scrypt in a child process of ``reactor``."""

    def __init__(self, reactor: Any, python: str = sys.executable) -> None:
        self.reactor = reactor
        self.python = python
        self._slots = DeferredSemaphore(MAX_CHILDREN)

    def __call__(self, password: str, salt: bytes) -> Deferred[bytes]:
        return self._slots.run(self._spawn, password, salt)

    def _spawn(self, password: str, salt: bytes) -> Deferred[bytes]:
        done: Deferred[bytes] = Deferred()
        stdin = salt.hex().encode() + b"\n" + password.encode()
        self.reactor.spawnProcess(_Child(stdin, done), self.python,
                                  [self.python, "-I", "-S", "-c", _CHILD], env={})
        return done
