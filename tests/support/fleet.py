"""A fleet of gridwire edges in one child process, that keep uploading through cuts.

``python -m support.fleet --endpoint tcp:127.0.0.1:PORT --pki DIR --edges 200 --status FILE``

Each edge is a gridedge.loadgen connection with a tiny in-memory journal: it
uploads a batch of ``--readings`` readings every ``--every`` seconds (window of
2), and when its connection goes (a node killed behind HAProxy) it reconnects
with backoff and resumes after ``Welcome.last_acked_seq``, sending again what
was not acknowledged.  Readings are unique per (meter, interval) and numbered
by seq, so PostgreSQL must end with exactly seqs 1..last for every edge.

Every half second it writes ``--status`` (JSON): edges welcomed, connections,
handshakes full/resumed with the bytes each took up to Welcome, and per edge
the highest acknowledged seq.  SIGUSR1: stop making batches, wait until every
edge has all its batches acknowledged, write the status with ``"done": true``,
exit.

Tests: tests/system/test_scale_out.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

from gridcloud import pki
from gridedge import loadgen
from gridedge.uplink.tls import ResumingCreator
from gridwire import Hello, IntervalRecord, ReadingBatch
from twisted.internet import defer, ssl, task

#: a fixed interval base, so the fleet's readings land in known partitions (2026-11-20)
T0 = 1_795_651_200


class FleetEdge:
    """One edge: batches by seq, uploaded until acknowledged, across reconnections."""

    def __init__(self, reactor: Any, index: int, endpoint: str, tls: ResumingCreator,
                 readings: int, stats: Stats) -> None:
        self.reactor = reactor
        self.edge_id = f"fleet-{index:04d}"
        self.index = index
        self.endpoint = endpoint
        self.tls = tls
        self.readings = readings
        self.stats = stats
        self.next_seq = 1  # first seq of the next batch to make
        self.acked = 0
        self.unacked: list[ReadingBatch] = []
        self.client: loadgen.EdgeClient | None = None
        self.welcomed = False

    def make_batch(self) -> ReadingBatch:
        first = self.next_seq
        n = self.readings
        self.next_seq += n
        base = self.index * 1000
        records = [IntervalRecord(base + i, T0 + 900 * ((first - 1) // n), 1000 + first + i,
                                  400, 2300, 1500, 950, 0) for i in range(n)]
        batch = ReadingBatch(first_seq=first, records=records)
        self.unacked.append(batch)
        return batch

    async def connect(self) -> None:
        delay = 0.2
        while True:
            try:
                client, counter = await loadgen.connect(
                    self.reactor, self.endpoint, self.tls, Hello(
                        min_version=1, max_version=1, firmware_version="fleet", boot_slot="A"),
                    counting=True)
                welcome = await client.welcome
            except Exception:
                self.stats.failed_connects += 1
                await task.deferLater(self.reactor, delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 3.0)
                continue
            assert counter is not None
            kind = "resumed" if client.resumed else "full"
            self.stats.handshakes[kind] += 1
            self.stats.handshake_bytes[kind] += counter.sent + counter.received
            self.stats.connections += 1
            self.client = client
            self.welcomed = True
            # The cloud has everything up to last_acked_seq: drop it, send the rest again.
            self.acked = max(self.acked, welcome.last_acked_seq)
            self.unacked = [b for b in self.unacked if b.last_seq > self.acked]
            for batch in self.unacked:
                self._send(client, batch)
            client.lost.addCallback(lambda _, c=client: self._lost(c))
            return

    def _send(self, client: loadgen.EdgeClient, batch: ReadingBatch) -> None:
        d = client.upload(batch)
        d.addCallbacks(self._acked, lambda _: None)

    def _acked(self, up_to: int) -> None:
        self.acked = max(self.acked, up_to)
        self.unacked = [b for b in self.unacked if b.last_seq > self.acked]

    def _lost(self, client: loadgen.EdgeClient) -> None:
        if self.client is client:
            self.client = None
            self.stats.lost += 1
            defer.ensureDeferred(self.connect())

    def tick(self, producing: bool) -> None:
        """Make one batch if there is room in the window and a connection to send it on."""
        if producing and self.client is not None and len(self.unacked) < 2:
            self._send(self.client, self.make_batch())

    @property
    def finished(self) -> bool:
        return not self.unacked and self.client is not None


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.lost = 0
        self.failed_connects = 0
        self.handshakes = {"full": 0, "resumed": 0}
        self.handshake_bytes = {"full": 0, "resumed": 0}


def edge_tls(ca: pki.Issued, edge_id: str, server_name: str) -> ResumingCreator:
    issued = pki.issue_edge(ca, edge_id, days=2)
    mine = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]
        issued.cert_pem() + b"\n" + issued.key_pem())
    authority = ssl.Certificate.loadPEM(ca.cert_pem())
    return ResumingCreator(ssl.optionsForClientTLS(server_name, trustRoot=authority,
                                                   clientCertificate=mine))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--edges", type=int, default=200)
    parser.add_argument("--readings", type=int, default=10)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--status", type=Path, required=True)
    args = parser.parse_args()
    ca = pki.load_issued(args.pki / "ca.pem", args.pki / "ca.key")
    stats = Stats()
    state = {"producing": True}

    async def run(reactor: Any) -> None:
        edges = [FleetEdge(reactor, i, args.endpoint, edge_tls(ca, f"fleet-{i:04d}",
                                                               args.server_name),
                           args.readings, stats) for i in range(args.edges)]

        def write(done: bool = False) -> None:
            status = {
                "done": done,
                "welcomed": sum(e.welcomed for e in edges),
                "connected": sum(e.client is not None for e in edges),
                "connections": stats.connections,
                "lost": stats.lost,
                "failed_connects": stats.failed_connects,
                "handshakes": stats.handshakes,
                "handshake_bytes": stats.handshake_bytes,
                "acked": {e.edge_id: e.acked for e in edges},
                "made": {e.edge_id: e.next_seq - 1 for e in edges},
            }
            tmp = args.status.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            os.replace(tmp, args.status)

        # SIGUSR1, not SIGTERM: the reactor takes SIGTERM and SIGINT to stop at once.
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(
            state.__setitem__, "producing", False))
        for i, edge in enumerate(edges):  # spread the first handshakes over a second
            reactor.callLater(i * 1.0 / len(edges), lambda e=edge: defer.ensureDeferred(
                e.connect()))
        offsets = {e.edge_id: random.uniform(0, args.every) for e in edges}
        ticks = 0
        while state["producing"] or not all(e.finished for e in edges):
            await task.deferLater(reactor, args.every / 5)
            ticks += 1
            for edge in edges:
                if (ticks * args.every / 5 + offsets[edge.edge_id]) % args.every < args.every / 5:
                    edge.tick(state["producing"])
            if ticks % 3 == 0:
                write()
        for edge in edges:
            if edge.client is not None:
                edge.client.transport.loseConnection()
        write(done=True)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
