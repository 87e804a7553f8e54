"""Bytes on each edge's connections per UTC day, as the cloud counts them: the HTTP API's
"bytes up/down today" (``edge_traffic``, migration 0006).

What is counted: every byte on the TCP socket of an edge connection, below
TLS (handshake, records, alerts), in both directions: the bytes the edge
counts itself (gridedge.uplink.counting, gridedge.uplink.traffic) and the
bytes a metered cellular link bills.  The counter sits under TLS::

    TCP  ->  TrafficCounter (this module)  ->  TLSMemoryBIOProtocol  ->  EdgeProtocol

"Up" is from the edge to the cloud (what the edge sent), "down" the other
way.  A byte is counted on the cloud when the socket hands it over (received)
or takes it (sent): on a cleanly closed connection both sides count the same
bytes; when a connection is cut, what the cloud wrote but the edge never got
(at most what was in flight) counts here and not there.

Whose bytes: the edge is known only once the TLS handshake named it (its
certificate), so a connection keeps its counts until the adapter
(gridcloud.protocol) calls :meth:`TrafficCounter.attribute`; from then on
they are the edge's, handshake included.  A connection that never names an
edge (no certificate, failed handshake) is counted in
:attr:`EdgeTraffic.unattributed` only.  A refused edge (revoked) with a valid
certificate is attributed: its dialling in costs bytes too.

Why in memory first: a count per chunk is an addition; PostgreSQL sees one
statement per flush for the whole node, every ``interval`` seconds and soon
after a connection closes (several closes share one flush).  The statement is
an additive upsert (``bytes = bytes + excluded.bytes``), so several serve
nodes and an edge's reconnects to other nodes sum up; rows go in (edge, day)
order so two nodes never wait on each other's row locks in opposite orders.
A failed flush keeps its counts for the next one.  What a node loses when it
is killed (kill -9, power) is what it counted since its last flush: at most
``interval`` seconds of its connections' bytes.  A clean stop flushes last.

Tests: tests/cloud/test_api_traffic.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

log = Logger(namespace="gridcloud.traffic")

#: (edge id, UTC day "YYYY-MM-DD") -> [bytes up, bytes down]
Counts = dict[tuple[str, str], list[int]]

#: writes rows (edge id, day, up, down), each (edge, day) once, adding to what is stored
Writer = Callable[[list[tuple[str, str, int, int]]], "defer.Deferred[Any]"]


class TrafficCounter(ProtocolWrapper):
    """Counts the raw bytes of one connection, kept per UTC day until the ledger takes them."""

    factory: CountingFactory

    def __init__(self, factory: CountingFactory, wrapped: Any) -> None:
        super().__init__(cast(Any, factory), wrapped)
        self.edge_id: str | None = None
        #: day -> [up, down] not yet taken by the ledger
        self.days: dict[str, list[int]] = {}
        self._ledger = factory.ledger

    def attribute(self, edge_id: str) -> None:
        """The TLS handshake named the edge: this connection's bytes (all of them) are its."""
        self.edge_id = edge_id

    def write(self, data: bytes) -> None:
        self._count(1, len(data))
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self._count(0, len(data))
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self._ledger.closed(self)

    def _count(self, index: int, size: int) -> None:
        day = self._ledger.today()
        counts = self.days.get(day)
        if counts is None:
            counts = self.days[day] = [0, 0]
        counts[index] += size


class CountingFactory(WrappingFactory):
    """Wraps the listening (TLS) factory: every accepted connection is counted."""

    protocol = TrafficCounter

    def __init__(self, wrapped: IProtocolFactory, ledger: EdgeTraffic) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.ledger = ledger

    def buildProtocol(self, addr: Any) -> TrafficCounter:
        counter = cast(TrafficCounter, super().buildProtocol(addr))
        self.ledger.opened(counter)
        return counter


def counter_under(transport: Any) -> TrafficCounter | None:
    """The counter under a TLS transport (None when the connection is not counted)."""
    below = getattr(transport, "transport", None)
    return below if isinstance(below, TrafficCounter) else None


class EdgeTraffic:
    """The node's ledger: the live connections' counts and what is waiting to be written."""

    def __init__(self, writer: Writer, clock: Any, interval: float = 60.0) -> None:
        self._writer = writer
        self._clock = clock
        self.interval = interval
        self._live: set[TrafficCounter] = set()
        self._pending: Counts = {}
        self._day = ""
        self._day_end = 0.0
        self._loop: task.LoopingCall | None = None
        self._soon: Any = None
        self._flushing: defer.Deferred[None] | None = None
        self._again = False
        #: bytes of connections that never named an edge (no certificate, failed handshake)
        self.unattributed = 0
        #: flushes written / failed so far
        self.flushes = 0
        self.failures = 0

    # -- from the counters ------------------------------------------------------------------

    def today(self) -> str:
        """The UTC day now, "YYYY-MM-DD" (recomputed once a day, not per chunk)."""
        now = self._clock.seconds()
        if now >= self._day_end or now < self._day_end - 86400:
            self._day = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day_end = (now // 86400 + 1) * 86400
        return self._day

    def opened(self, counter: TrafficCounter) -> None:
        self._live.add(counter)

    def closed(self, counter: TrafficCounter) -> None:
        """A connection ended: take its counts and write them soon."""
        self._live.discard(counter)
        if counter.edge_id is None:
            self.unattributed += sum(up + down for up, down in counter.days.values())
            counter.days = {}
            return
        self._take(counter)
        if self._loop is not None and self._soon is None:
            self._soon = self._clock.callLater(0, self._flush_soon)

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Flush every ``interval`` seconds from now on."""
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("traffic flush loop failed", f))

    def stop(self) -> defer.Deferred[None]:
        """Write everything counted so far (the connections are closed or closing); nothing
        schedules a flush after this: a byte counted later is not written."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        return self.flush()

    # -- writing ------------------------------------------------------------------------------

    def unwritten(self) -> Counts:
        """What is counted (attributed) and not yet written, live connections included."""
        out = {key: list(value) for key, value in self._pending.items()}
        for counter in self._live:
            if counter.edge_id is not None:
                for day, (up, down) in counter.days.items():
                    _add(out, (counter.edge_id, day), up, down)
        return out

    def flush(self) -> defer.Deferred[None]:
        """Write what is counted, in one statement; a failure keeps it for the next flush.
        While a flush runs, another one waits for it and then writes what came meanwhile."""
        if self._flushing is not None:
            self._again = True
            waiting: defer.Deferred[None] = defer.Deferred()
            self._flushing.addBoth(lambda _: waiting.callback(None))
            return waiting
        for counter in list(self._live):
            if counter.edge_id is not None:
                self._take(counter)
        if not self._pending:
            return defer.succeed(None)
        taken, self._pending = self._pending, {}
        rows = [(edge, day, up, down) for (edge, day), (up, down) in sorted(taken.items())]

        def written(_: Any) -> None:
            self.flushes += 1

        def failed(failure: Failure) -> None:
            self.failures += 1
            for key, (up, down) in taken.items():
                _add(self._pending, key, up, down)
            log.warn("traffic counts of {count} edge-days not written yet: {why}",
                     count=len(taken), why=failure.getErrorMessage())

        def done(_: Any) -> Any:
            self._flushing = None
            if self._again:
                self._again = False
                return self.flush()
            return None

        d = defer.maybeDeferred(self._writer, rows)
        d.addCallbacks(written, failed)
        self._flushing = d
        d.addBoth(done)
        result: defer.Deferred[None] = defer.Deferred()
        d.addBoth(lambda _: result.callback(None))
        return result

    def _flush_soon(self) -> None:
        self._soon = None
        self.flush()

    def _take(self, counter: TrafficCounter) -> None:
        assert counter.edge_id is not None
        for day, (up, down) in counter.days.items():
            _add(self._pending, (counter.edge_id, day), up, down)
        counter.days = {}


def _add(counts: Counts, key: tuple[str, str], up: int, down: int) -> None:
    have = counts.get(key)
    if have is None:
        counts[key] = [up, down]
    else:
        have[0] += up
        have[1] += down
