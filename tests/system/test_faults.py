"""Nothing lost, nothing doubled: gridsim -> pty -> `gridedge run` -> fault proxy ->
`gridcloud serve` -> PostgreSQL, with cuts, stalls, throttling, corruption, kill -9 of the
cloud and of the edge, and a PostgreSQL restart.  After each, every record gridsim emitted is
in PostgreSQL exactly once (count and per-meter energy sums match its ground truth).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.edge_harness import (
    Cloud,
    Edge,
    Pki,
    Sim,
    assert_exactly_once,
    edge_config,
    make_pki,
    running,
    stored_rows,
)
from support.proxy import FaultProxy
from support.waiting import wait_until

pytestmark = pytest.mark.slow

METERS = 12


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, Pki]]:
    data = tmp_path / "data"
    yield tmp_path, data, make_pki(tmp_path, data)


def converge(dsn: str, sim: Sim, edge: Edge, cloud: Cloud, timeout: float = 120) -> None:
    """Wait for gridsim to finish its run, for PostgreSQL to hold all of it and for the edge to
    have nothing left to send."""
    logs = (edge.log, cloud.log, sim.log)
    wait_until(sim.complete, timeout, "gridsim to finish its simulated run", logs)
    total = sum(c for c, _ in sim.expected().values())
    wait_until(lambda: stored_rows(dsn) >= total, timeout,
               f"PostgreSQL to hold all {total} records", logs)
    # Once the cloud has acknowledged every entry, nothing is left to be sent again: a duplicate
    # still in flight would be in PostgreSQL by now.
    wait_until(lambda: edge.pending() == 0, timeout, "the edge's journal to drain", logs)


def more_rows(dsn: str, logs: tuple[Path, ...]) -> None:
    """Wait until PostgreSQL gains records: a fault injected now hits a stream in progress."""
    before = stored_rows(dsn)
    wait_until(lambda: stored_rows(dsn) > before, 60, f"more than {before} records in PostgreSQL",
               logs)


def lines_with(log: Path, needle: str) -> int:
    return sum(needle in line for line in log.read_text(errors="replace").splitlines())


def test_two_hundred_random_cuts_stalls_throttling_corruption_in_a_day(
    setup: tuple[Path, Path, Pki], pg_dsn: str
) -> None:
    """>= 200 random cuts plus stalls, throttling and bit flips during one simulated day."""
    root, data, pki = setup
    cloud = Cloud(root, pki, pg_dsn).start()
    with FaultProxy("127.0.0.1", cloud.port, seed=11) as proxy:
        sim = Sim(root, root / "radio", meters=METERS, speed=1800, duration="1d",
                  extra=("--corrupt-rate", "0.01")).start()
        edge = Edge(root, data, edge_config(data, uplink_port=proxy.port,
                                            radio=sim.port)).start()
        with running(edge, sim, cloud):
            rng = random.Random(5)
            cuts = 0
            while not sim.complete() or cuts < 200:
                time.sleep(rng.uniform(0.05, 0.3))  # paces the faults, random as in the field
                roll = rng.random()
                if roll < 0.04:
                    proxy.stall(rng.uniform(0.5, 2.0))
                elif roll < 0.07:
                    proxy.throttle(rng.choice([2000, 8000, None]))
                elif roll < 0.09:
                    proxy.corrupt(1)
                if proxy.cut():
                    cuts += 1
                assert edge.proc.alive and cloud.proc.alive
            proxy.throttle(None)
            converge(pg_dsn, sim, edge, cloud)
            got = assert_exactly_once(pg_dsn, sim)
            assert proxy.stats.cuts >= 200
            print(f"\n{proxy.stats.cuts} cuts, {proxy.stats.connections} connections, "
                  f"{proxy.stats.corrupted} corrupted chunks; {got.rows} records exactly once")
            code, text = edge.health()
            assert code == 0, text
            assert edge.proc.stop() == 0


def test_cloud_killed_and_restarted(setup: tuple[Path, Path, Pki], pg_dsn: str) -> None:
    """kill -9 of gridcloud serve in mid-stream, twice, then a restart: nothing lost or doubled."""
    root, data, pki = setup
    cloud = Cloud(root, pki, pg_dsn).start()
    sim = Sim(root, root / "radio", meters=METERS, speed=2400, duration="12h").start()
    edge = Edge(root, data, edge_config(data, uplink_port=cloud.port, radio=sim.port)).start()
    with running(edge, sim, cloud):
        for _ in range(2):
            more_rows(pg_dsn, (edge.log, cloud.log))
            cloud.proc.kill9()
            wait_until(lambda: not edge.report()["snapshot"]["uplink_connected"], 30,
                       "the edge to see the cloud gone", (edge.log,))
            assert edge.proc.alive
            cloud.start()
        converge(pg_dsn, sim, edge, cloud)
        assert_exactly_once(pg_dsn, sim)
        assert edge.proc.stop() == 0


def test_edge_killed_in_mid_batch_and_restarted(setup: tuple[Path, Path, Pki], pg_dsn: str) -> None:
    """A backlog is uploading through a throttled link when the edge gets kill -9; after a
    restart everything is in PostgreSQL once."""
    root, data, pki = setup
    cloud = Cloud(root, pki, pg_dsn).start()
    with FaultProxy("127.0.0.1", cloud.port) as proxy:
        proxy.refuse(True)  # offline: a backlog builds up in the journal
        sim = Sim(root, root / "radio", meters=METERS, speed=2400, duration="12h").start()
        edge = Edge(root, data, edge_config(
            data, uplink_port=proxy.port, radio=sim.port, connect_timeout=30,
            max_in_flight=1, batch_records=50)).start()
        with running(edge, sim, cloud):
            wait_until(lambda: sim.complete(), 60, "gridsim's run", (sim.log,))
            proxy.throttle(1000)  # bytes/s: one small batch at a time trickles through
            proxy.refuse(False)
            wait_until(lambda: stored_rows(pg_dsn) > 0, 60, "the first batch to be committed",
                       (edge.log, cloud.log))
            sent = proxy.stats.bytes_up
            wait_until(lambda: proxy.stats.bytes_up > sent, 30, "the next batch on its way",
                       (edge.log,))
            edge.proc.kill9()
            partial = stored_rows(pg_dsn)
            total = sum(c for c, _ in sim.expected().values())
            assert 0 < partial < total, (partial, total)
            proxy.throttle(None)
            edge.start()
            converge(pg_dsn, sim, edge, cloud)
            assert_exactly_once(pg_dsn, sim)
            assert edge.proc.stop() == 0


def test_postgresql_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL (a cluster of this test's own) is restarted twice mid-stream, once with a
    fast stop and once with a crash stop; gridcloud reconnects and nothing is lost or doubled."""
    import pgcluster

    data = tmp_path / "data"
    pki = make_pki(tmp_path, data)
    with pgcluster.temporary_cluster() as cluster:
        dsn = cluster.dsn()
        cloud = Cloud(tmp_path, pki, dsn).start()
        sim = Sim(tmp_path, tmp_path / "radio", meters=METERS, speed=2400, duration="12h").start()
        edge = Edge(tmp_path, data, edge_config(data, uplink_port=cloud.port,
                                                radio=sim.port)).start()
        with running(edge, sim, cloud):
            port = cluster.port
            monkeypatch.setattr(pgcluster, "free_port", lambda: port)  # back on the same port
            for stop in (lambda: cluster.stop("fast"), cluster.kill):
                more_rows(dsn, (edge.log, cloud.log))
                outages = lines_with(cloud.log, "PostgreSQL connection lost")
                stop()
                # Down until gridcloud has felt it: one line per outage.
                wait_until(lambda n=outages: lines_with(cloud.log, "PostgreSQL connection lost")
                           > n, 30, "gridcloud to notice the stopped PostgreSQL", (cloud.log,))
                cluster.start()
                assert cloud.proc.alive and edge.proc.alive
            converge(dsn, sim, edge, cloud)
            assert_exactly_once(dsn, sim)


def test_unprovisioned_uplink_restarts_alone_while_radio_and_journal_work(
    setup: tuple[Path, Path, Pki], pg_dsn: str
) -> None:
    """Started before its certificate is in place, the unit keeps journalling radio records while
    the supervisor retries the uplink; once the files appear, everything reaches PostgreSQL."""
    root, data, pki = setup
    hidden = root / "tls-later"
    pki.edge_tls.rename(hidden)
    cloud = Cloud(root, pki, pg_dsn).start()
    sim = Sim(root, root / "radio", meters=METERS, speed=2400, duration="6h").start()
    edge = Edge(root, data, edge_config(data, uplink_port=cloud.port, radio=sim.port)).start()
    with running(edge, sim, cloud):
        wait_until(lambda: "edge.pem is missing" in edge.log.read_text(), 30,
                   "the uplink's first failure", (edge.log,))
        code, text = edge.health()
        assert code == 1 and "uplink is not running" in text and "edge.pem is missing" in text
        wait_until(lambda: edge.pending() > 0, 30, "records journalled meanwhile", (edge.log,))
        assert stored_rows(pg_dsn) == 0
        hidden.rename(pki.edge_tls)
        converge(pg_dsn, sim, edge, cloud)
        assert_exactly_once(pg_dsn, sim)
        assert "restarting uplink" in edge.log.read_text()
        wait_until(lambda: edge.health()[0] == 0, 30, "a healthy unit", (edge.log,))
        assert edge.proc.stop() == 0


def test_tls_session_resumed_after_cuts_saves_bytes(setup: tuple[Path, Path, Pki],
                                                    pg_dsn: str) -> None:
    """Against gridcloud serve (stateless tickets), every reconnect after a cut resumes the TLS
    session, and costs at most 65% of the bytes of the first, full handshake (60% before the
    full handshake stopped carrying the CA certificate both ways, issue 17)."""
    import re

    root, data, pki = setup
    cloud = Cloud(root, pki, pg_dsn)
    (root / "cloud.toml").write_text('[server]\ntls_resumption = "tickets"\n')
    cloud.proc.argv += ["--config", str(root / "cloud.toml")]
    cloud.start()
    with FaultProxy("127.0.0.1", cloud.port) as proxy:
        edge = Edge(root, data, edge_config(data, uplink_port=proxy.port, radio=None)).start()
        with running(edge, cloud):
            pattern = re.compile(r"uplink connected \((new|resumed) TLS session; (\d+) bytes")

            def handshakes() -> list[tuple[str, int]]:
                return [(m[1], int(m[2])) for m in pattern.finditer(edge.log.read_text())]

            for n in range(1, 6):
                wait_until(lambda n=n: len(handshakes()) >= n, 30, f"connection {n}",
                           (edge.log, cloud.log))
                proxy.cut()
            seen = handshakes()
            assert seen[0][0] == "new"
            assert all(kind == "resumed" for kind, _ in seen[1:5]), seen
            full, resumed = seen[0][1], max(b for _, b in seen[1:5])
            assert resumed <= 0.65 * full, seen
            print(f"\nhandshake to Welcome: full {full} B, resumed {resumed} B "
                  f"({100 * (full - resumed) / full:.0f}% saved)")
