"""The journal's limits with the whole chain running: a size bound reached while the cloud is
unreachable (oldest entries dropped, counted, reported; the edge keeps running), and a data
partition that fills up (clear error and event, no crash loop, nothing lost once space is back).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psycopg2
import pytest
from gridedge.journal import EVENT_JOURNAL_DISK_FULL, EVENT_JOURNAL_EVICTED

from support.edge_harness import (
    EDGE_ID,
    Cloud,
    Edge,
    Sim,
    assert_exactly_once,
    edge_config,
    make_pki,
    running,
    stored,
    stored_rows,
)
from support.journal_helpers import tiny_tmpfs
from support.proxy import FaultProxy
from support.waiting import wait_until

pytestmark = pytest.mark.slow


def events(dsn: str) -> list[tuple[int, int, str]]:
    with contextlib.closing(psycopg2.connect(dsn)) as db, db.cursor() as cur:
        cur.execute("SELECT seq, kind, detail FROM events WHERE edge_id = %s ORDER BY seq",
                    (EDGE_ID,))
        return [(int(s), int(k), str(d)) for s, k, d in cur.fetchall()]


def radio_frames(edge: Edge) -> int:
    """Radio frames the running unit has decoded since it started."""
    return int(edge.report()["snapshot"]["details"]["radio"]["frames_ok"])


def test_size_bound_drops_oldest_reports_and_keeps_running(tmp_path: Path, pg_dsn: str) -> None:
    """Offline with a 128 KiB journal: oldest entries are evicted and reported; once online,
    every journal sequence number is accounted for: in readings, in events, or evicted."""
    data = tmp_path / "data"
    pki = make_pki(tmp_path, data)
    cloud = Cloud(tmp_path, pki, pg_dsn).start()
    with FaultProxy("127.0.0.1", cloud.port) as proxy:
        proxy.refuse(True)
        sim = Sim(tmp_path, tmp_path / "radio", meters=60, speed=3000, duration="1d").start()
        edge = Edge(tmp_path, data, edge_config(data, uplink_port=proxy.port, radio=sim.port,
                                                journal_max="128 KiB")).start()
        with running(edge, sim, cloud):
            wait_until(sim.complete, 90, "gridsim's run", (sim.log, edge.log))
            offline = edge.report()["snapshot"]["details"]["journal"]
            assert offline["evicted_total"] > 0, offline
            assert offline["size_bytes"] <= 128 * 1024
            assert edge.proc.alive
            proxy.refuse(False)
            wait_until(lambda: edge.pending() == 0,
                       60, "the journal to drain", (edge.log, cloud.log))
            journal = edge.report()["snapshot"]["details"]["journal"]
            got = stored(pg_dsn)
            evs = events(pg_dsn)
            issued = journal["next_seq"] - 1
            assert got.rows == got.distinct_keys == got.distinct_seqs
            assert got.rows + len(evs) + journal["evicted_total"] == issued
            evicted_events = [e for e in evs if e[1] == EVENT_JOURNAL_EVICTED]
            assert evicted_events and "dropped" in evicted_events[-1][2]
            truth = sim.expected()
            assert all(got.per_meter[m][0] <= truth[m][0] for m in got.per_meter)
            assert sum(c for c, _ in truth.values()) > got.rows
            assert edge.proc.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root "
                    "(tests/edge/test_journal_disk_full.py covers the journal with an rlimit)")
def test_full_data_partition_no_crash_loop_nothing_lost(tmp_path: Path, pg_dsn: str) -> None:
    """The data partition (a real 4 MiB tmpfs) fills up mid-run: gridedge keeps running and
    says why it is unhealthy; once space is freed, every record arrives once, plus the event."""
    with tiny_tmpfs(tmp_path / "data", "4m") as data:
        pki = make_pki(tmp_path, data)
        cloud = Cloud(tmp_path, pki, pg_dsn).start()
        sim = Sim(tmp_path, tmp_path / "radio", meters=12, speed=1500, duration="12h").start()
        edge = Edge(tmp_path, data, edge_config(data, uplink_port=cloud.port,
                                                radio=sim.port)).start()
        with running(edge, sim, cloud):
            wait_until(lambda: stored_rows(pg_dsn) > 0, 60, "first records", (edge.log,))
            filler = data / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 512)
            os.close(fd)
            wait_until(lambda: edge.health()[0] == 1 and "data partition is full"
                       in edge.health()[1], 60, "health to report the full disk", (edge.log,))
            # No crash loop: the same process goes on taking the radio's frames on a full disk.
            frames = radio_frames(edge)
            wait_until(lambda: radio_frames(edge) >= frames + 50, 60,
                       "50 more radio frames handled with the disk full", (edge.log,))
            assert edge.proc.alive, "gridedge must not exit on a full disk"
            parts = edge.report()["snapshot"]["parts"]
            assert all(p["running"] for p in parts.values()), parts
            assert "DISK FULL" in edge.log.read_text()
            filler.unlink()
            wait_until(sim.complete, 90, "gridsim's run", (sim.log,))
            total = sum(c for c, _ in sim.expected().values())
            wait_until(lambda: stored_rows(pg_dsn) >= total, 120,
                       f"all {total} records in PostgreSQL", (edge.log, cloud.log))
            # Everything acknowledged, so nothing can arrive twice after this.
            wait_until(lambda: edge.pending() == 0, 60, "the journal to drain", (edge.log,))
            assert_exactly_once(pg_dsn, sim)
            wait_until(lambda: any(k == EVENT_JOURNAL_DISK_FULL for _, k, _ in events(pg_dsn)),
                       30, "the disk-full event in PostgreSQL", (edge.log,))
            assert edge.proc.stop() == 0
