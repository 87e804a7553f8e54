"""The pseudo-terminal that stands in for the radio module's UART.

gridsim opens a pty pair, puts the slave end in raw mode, points the
requested path at it with a symbolic link (replaced atomically, so the edge
never sees a half-made link) and keeps its own handle on the slave open.
That handle matters: without it, the master would see EIO and hang-ups
whenever the edge closes the port (a restart), and bytes written meanwhile
would be lost at random; with it, they queue like in a real UART's FIFO, up to
``uart_buffer`` bytes, beyond which the module drops what it sends (counted),
as a real module does when nobody drains its UART.

Tests: tests/sim/test_sim_cli.py, tests/radio/test_end_to_end.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tty
from collections.abc import Callable
from pathlib import Path

from twisted.internet import abstract

__all__ = ["PtyLink", "open_pty"]


def open_pty(link_path: str | Path) -> tuple[int, int, str]:
    """(master fd, slave fd, slave device name), with ``link_path`` pointing at the slave."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    name = os.ttyname(slave)
    link = Path(link_path)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(name)
    os.replace(tmp, link)
    return master, slave, name


class PtyLink(abstract.FileDescriptor):
    """A Twisted transport over the pty master: bytes to ``on_data``, ``write`` to the edge."""

    def __init__(
        self, reactor: object, master: int, slave: int, on_data: Callable[[bytes], None]
    ) -> None:
        super().__init__(reactor)  # type: ignore[arg-type]
        self._master = master
        self._slave = slave
        self._on_data = on_data
        self.overflows = 0
        self.bytes_dropped = 0
        self.connected = 1

    def fileno(self) -> int:
        return self._master

    def buffered(self) -> int:
        """Bytes waiting to go into the pty."""
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def send(self, data: bytes, limit: int) -> None:
        """Write ``data`` unless more than ``limit`` bytes are already waiting (then drop it)."""
        if self.buffered() + len(data) > limit:
            self.overflows += 1
            self.bytes_dropped += len(data)
            return
        self.write(data)

    def doRead(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR, errno.EIO):
                return None
            raise
        if data:
            self._on_data(data)
        return None

    def writeSomeData(self, data: bytes) -> int:
        try:
            return os.write(self._master, data)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return 0
            raise

    def close(self) -> None:
        """Stop using the pty and close both ends (the edge then sees the device vanish)."""
        self.stopReading()  # type: ignore[no-untyped-call]
        self.stopWriting()  # type: ignore[no-untyped-call]
        self.connected = 0
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
