"""Frames from the edge to the module: the port's send function and the command ids.

Why one place: polls and relay commands share the module's u16 command-id
space (docs/radio.md, "Command ids"), and both go out through the same port,
which comes and goes; so id allocation and "is the port open" are decided
here, once, for both.

Tests: tests/radio/test_link.py.
"""

from __future__ import annotations

from collections.abc import Callable

from gridradio import Frame, encode

from .counters import LinkCounters

__all__ = ["Outbox"]


class Outbox:
    """Encodes and writes frames while a port is open; hands out command ids."""

    def __init__(self, counters: LinkCounters) -> None:
        self.counters = counters
        self._send: Callable[[bytes], object] | None = None
        self._next_id = 1
        self._in_use: set[int] = set()

    @property
    def is_open(self) -> bool:
        return self._send is not None

    def open(self, send: Callable[[bytes], object]) -> None:
        self._send = send

    def close(self) -> None:
        self._send = None

    def send(self, frame: Frame) -> None:
        """Write ``frame``, or count it unsent when no port is open."""
        if self._send is None:
            self.counters.frames_unsent += 1
            return
        self.counters.frames_sent += 1
        self._send(encode(frame))

    def new_id(self) -> int:
        """The next command id (1..65535, then 1 again) not in use; in use until released."""
        while True:
            cmd_id = self._next_id
            self._next_id = cmd_id % 0xFFFF + 1
            if cmd_id not in self._in_use:
                self._in_use.add(cmd_id)
                return cmd_id

    def release(self, cmd_id: int) -> None:
        """The command ``cmd_id`` is answered or given up: its id may be used again."""
        self._in_use.discard(cmd_id)
