"""A TCP proxy for fault injection between the edge and the cloud (loopback only).

Why in the test suite and not iptables/tc: it needs no privileges or network
namespace, it is deterministic per seed, and the test can act at exact moments
(cut *now*, in the middle of a batch).  It runs an asyncio loop in a background
thread so the synchronous pytest code can drive it while subprocesses run.

Faults, all on live connections:

* ``cut()``        abort every connection at once (both sides see a reset);
* ``stall(s)``     forward nothing for ``s`` seconds (bytes wait, as in a
                   congested cell), then continue;
* ``throttle(r)``  forward at most ``r`` bytes/s per direction (None: no limit);
* ``corrupt(n)``   flip one random bit in each of the next ``n`` chunks
                   (TLS must detect it and the connection must die cleanly);
* ``refuse(flag)`` accept new connections and close them at once.

Tests: used by tests/system/test_faults.py and tests/system/test_journal_limits.py (a bug here
shows up as failures there).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProxyStats:
    """What happened, for the test's assertions and messages."""

    connections: int = 0
    cuts: int = 0
    corrupted: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    refused: int = 0
    live: int = 0
    history: list[str] = field(default_factory=list)


class FaultProxy:
    """Forward 127.0.0.1:<port> to a target, with faults on demand."""

    def __init__(self, target_host: str, target_port: int, *, seed: int = 1) -> None:
        self.target = (target_host, target_port)
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault-proxy")
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._resume_at = 0.0
        self._rate: float | None = None
        self._corrupt = 0
        self._refuse = False
        self._hold_up = False
        self.port = 0

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start()).result(10)
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    # -- faults (callable from any thread) ---------------------------------------------------

    def cut(self) -> int:
        """Abort every live connection; returns how many were cut."""
        n: int = self._call(self._cut()).result(10)
        return n

    def stall(self, seconds: float) -> None:
        self._resume_at = time.monotonic() + seconds

    def throttle(self, bytes_per_second: float | None) -> None:
        self._rate = bytes_per_second

    def corrupt(self, chunks: int) -> None:
        self._corrupt += chunks

    def refuse(self, flag: bool) -> None:
        self._refuse = flag

    def hold_up(self, flag: bool) -> None:
        """Hold what the edge sends (the cloud hears nothing) while the cloud's bytes still
        reach the edge; a cut then drops what was held."""
        self._hold_up = flag

    def retarget(self, host: str, port: int) -> None:
        """Send new connections elsewhere (e.g. a restarted cloud on a new port)."""
        self.target = (host, port)

    # -- plumbing ----------------------------------------------------------------------------

    async def _cut(self) -> int:
        pairs = list(self._pairs)
        for a, b in pairs:
            for w in (a, b):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._pairs.clear()
        if pairs:
            self.stats.cuts += 1
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse:
            self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.stats.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        self.stats.live = len(self._pairs)
        await asyncio.gather(
            self._pump(reader, up_writer, "up"),
            self._pump(up_reader, writer, "down"),
            return_exceptions=True,
        )
        self._pairs.discard(pair)
        self.stats.live = len(self._pairs)
        for w in pair:
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                while direction == "up" and self._hold_up:  # one-way silence
                    await asyncio.sleep(0.02)
                while time.monotonic() < self._resume_at:  # a stall: the fault is the delay
                    await asyncio.sleep(min(0.05, self._resume_at - time.monotonic()))
                if self._corrupt > 0:
                    self._corrupt -= 1
                    self.stats.corrupted += 1
                    buf = bytearray(data)
                    i = self._rng.randrange(len(buf))
                    buf[i] ^= 1 << self._rng.randrange(8)
                    data = bytes(buf)
                if self._rate:  # throttled: the delay is the simulated link's speed
                    await asyncio.sleep(len(data) / self._rate)
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
