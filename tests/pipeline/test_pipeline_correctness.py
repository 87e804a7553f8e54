"""The pipeline's results equal a recomputation from scratch: aggregates from ``readings``,
balances from top-ups minus charges from readings and tariffs; with late and duplicate
readings, a register reset, a tariff change mid-day, a poison record, and kill -9 of worker
processes at random points while a simulated week of 1,000 meters flows.  And every alarm
kind raised once and cleared with its evidence.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from gridcloud import migrations

from support.pipeline_data import (
    AGGREGATE_MISMATCHES,
    CREDIT_MISMATCHES,
    INTERVAL,
    RELAY_MISMATCHES,
    T0,
    Fleet,
    backlog,
    connect,
    drain,
)
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DAYS = 7


def mismatches(cur: Any) -> dict[str, list[Any]]:
    out = {}
    for name, sql in (("aggregates", AGGREGATE_MISMATCHES), ("credit", CREDIT_MISMATCHES),
                      ("relay", RELAY_MISMATCHES)):
        cur.execute(sql)
        out[name] = cur.fetchall()[:5]
    return out


@pytest.fixture
def db(module_dsn: str) -> Any:
    migrations.migrate(module_dsn)
    conn = connect(module_dsn)
    cur = conn.cursor()
    cur.execute("TRUNCATE edges, readings, events, meters, pipeline_progress, meter_state,"
                " energy_meter, energy_edge, edge_demand, customers, tariffs, tariff_versions,"
                " credit_accounts, topups, ledger, relay_requests, alarms,"
                " pipeline_dead_letters, feed_log, dead_letters CASCADE")
    yield cur
    conn.close()


def test_late_duplicate_reset_and_tariff_change(db: Any) -> None:
    """Late readings (days late, and interleaved), a batch sent twice, a register that goes
    down, and a tariff changed at noon: aggregates and balances equal the recomputation."""
    fleet = Fleet(edges=2, per_edge=5)
    fleet.setup(db, balance=100)
    db.execute("INSERT INTO tariff_versions SELECT tariff_id, to_timestamp(%s), 60,"
               " '{0,720}', '{30,90}' FROM tariffs WHERE name = 'flat'", (T0 + 86400 + 43200,))
    batches = list(fleet.batches(intervals=4 * 96, per_batch=8))
    held = [b for i, b in enumerate(batches) if i % 9 == 4]  # arrive days late
    # A register reset: meter 1000 reads 0-based from the 100th interval on.
    for _edge, rows in batches:
        for i, row in enumerate(rows):
            if row[0] == 1000 and row[1] >= T0 + 100 * INTERVAL:
                rows[i] = (row[0], row[1], row[2] - 900_000 if row[2] > 900_000 else row[2] // 7,
                           *row[3:])
    for i, (edge, rows) in enumerate(batches):
        if (edge, rows) in held:
            continue
        fleet.ingest(db, edge, rows)
        if i % 5 == 0:
            drain(db)
    fleet.ingest(db, batches[0][0], batches[0][1])  # a duplicate: stored once by ingest
    drain(db)
    for edge, rows in held:
        fleet.ingest(db, edge, rows)
        drain(db, batch=7)
    assert backlog(db) == 0
    assert mismatches(db) == {"aggregates": [], "credit": [], "relay": []}
    db.execute("SELECT count(*) FROM ledger l WHERE kind = 'energy' AND EXISTS (SELECT 1"
               " FROM ledger k WHERE k.meter_id = l.meter_id AND k.kind = 'energy'"
               " AND k.entry_id < l.entry_id AND k.last_interval_end > l.first_interval_end)")
    assert db.fetchone()[0] > 0  # late readings were charged after later ones
    db.execute("SELECT count(*) FROM relay_requests WHERE desired = 'open'")
    assert db.fetchone()[0] > 0  # some accounts ran out


def test_a_poison_record_is_set_aside_and_the_rest_flows(db: Any) -> None:
    """A reading whose charge overflows fails its batch; retries narrow it down, it lands in
    pipeline_dead_letters with the reason, and every other record is processed."""
    fleet = Fleet(edges=1, per_edge=3)
    fleet.setup(db)
    rows = fleet.interval(0, 0, random.Random(1)) + fleet.interval(0, 1, random.Random(2))
    rows[4] = (rows[4][0], rows[4][1], 2**62, *rows[4][3:])  # Wh * price overflows bigint
    fleet.ingest(db, "pe000", rows)
    fleet.ingest(db, "pe000", fleet.interval(0, 2, random.Random(3)))
    drain(db)
    assert backlog(db) == 0
    db.execute("SELECT seq, reason, attempts FROM pipeline_dead_letters")
    (seq, reason, tries), = db.fetchall()
    assert seq == 5 and "out of range" in reason and tries == 3
    assert mismatches(db) == {"aggregates": [], "credit": [], "relay": []}


def _pipeline(dsn: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GRIDCLOUD_DSN": dsn}
    return subprocess.Popen(
        [sys.executable, "-m", "gridcloud.cli", "pipeline", "--concurrency", "2",
         "--batch-size", "400"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def test_kill_9_while_a_week_of_1000_meters_flows(module_dsn: str, db: Any,
                                                  tmp_path: Path) -> None:
    """Two worker processes, each killed with SIGKILL at random points and restarted, while a
    week of 1,000 meters (672,000 readings) is ingested: afterwards every aggregate and balance
    equals the recomputation from scratch, and nothing is left unprocessed."""
    fleet = Fleet(edges=20, per_edge=50, seed=7)
    fleet.setup(db, balance=8000)
    rng = random.Random(11)
    log = tmp_path / "pipeline.log"
    workers = [_pipeline(module_dsn, log) for _ in range(2)]
    kills = 0
    next_kill = time.monotonic() + rng.uniform(0.3, 1.5)
    held = []
    try:
        for i, (edge, rows) in enumerate(fleet.batches(intervals=DAYS * 96, per_batch=8)):
            if i % 97 == 13:
                held.append((edge, rows))
                continue
            fleet.ingest(db, edge, rows)
            if time.monotonic() >= next_kill:
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = _pipeline(module_dsn, log)
                kills += 1
                next_kill = time.monotonic() + rng.uniform(0.3, 1.5)
        for edge, rows in held:
            fleet.ingest(db, edge, rows)
        wait_until(lambda: backlog(db) == 0, 240, "the pipeline catching up", logs=(log,),
                   interval=0.5)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=30) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert kills >= 3
    db.execute("SELECT count(*) FROM readings")
    assert db.fetchone()[0] == DAYS * 96 * 1000
    db.execute("SELECT count(*) FROM pipeline_dead_letters")
    assert db.fetchone()[0] == 0
    assert mismatches(db) == {"aggregates": [], "credit": [], "relay": []}
    assert "Traceback" not in log.read_text()


def _alarms(cur: Any) -> list[tuple[Any, ...]]:
    cur.execute("SELECT kind, edge_id, meter_id, cleared_at IS NOT NULL, evidence,"
                " cleared_evidence FROM alarms ORDER BY alarm_id")
    return cur.fetchall()


def test_alarms_are_raised_once_and_cleared_with_evidence(db: Any) -> None:
    """Tamper and voltage from readings, a journal eviction from the unit's event, a silent
    meter and an offline unit from the sweep: each raised once with its evidence, and cleared
    (with the clearing evidence) when the condition ends."""
    fleet = Fleet(edges=2, per_edge=2)
    fleet.setup(db, prepaid=False)
    rng = random.Random(5)
    first = fleet.interval(0, 0, rng)
    first[0] = (*first[0][:7], 2)            # meter 1000: tamper
    first[1] = (*first[1][:4], 2600, *first[1][5:])  # meter 1001: 260.0 V
    fleet.ingest(db, "pe000", first)
    again = fleet.interval(0, 1, rng)
    again[0] = (*again[0][:7], 2)            # still tampered: not raised twice
    again[1] = (*again[1][:4], 2590, *again[1][5:])
    fleet.ingest(db, "pe000", again)
    drain(db)
    kinds = [(a[0], a[2], a[3]) for a in _alarms(db)]
    assert kinds == [("tamper", 1000, False), ("voltage", 1001, False)]
    assert _alarms(db)[0][4]["seq"] == 1 and _alarms(db)[1][4]["voltage_dv"] == 2600
    fleet.ingest(db, "pe000", fleet.interval(0, 2, rng))  # both back to normal
    db.execute("SELECT ingest_event('pe000', %s, 0, %s, 32769, '12 readings dropped')",
               (fleet.next_seq["pe000"], T0))
    fleet.next_seq["pe000"] += 1
    drain(db)
    alarms = _alarms(db)
    assert [(a[0], a[3]) for a in alarms] == [("tamper", True), ("voltage", True),
                                             ("journal_eviction", False)]
    assert alarms[0][5]["seq"] == 5 and alarms[2][4]["detail"] == "12 readings dropped"
    fleet.ingest(db, "pe000", fleet.interval(0, 3, rng))
    drain(db)
    assert _alarms(db)[2][3] is True  # the unit's next readings clear the eviction

    # Time passing: pe000 is connected but meter 2000's last reading (pe001) is old; pe001
    # itself has been offline (no session) for longer than 60 minutes.
    fleet.ingest(db, "pe001", fleet.interval(1, 0, rng))
    db.execute("UPDATE edges SET session_token = CASE edge_id WHEN 'pe000' THEN 't' END,"
               " last_connected_at = now() - interval '2 hours',"
               " last_batch_at = now() - interval '2 hours'")
    db.execute("SELECT raised, cleared FROM pipeline_sweep(4, 60)")
    assert db.fetchone() == (3, 0)  # meters 1000, 1001 silent; unit pe001 offline
    db.execute("SELECT raised, cleared FROM pipeline_sweep(4, 60)")
    assert db.fetchone() == (0, 0)  # raised once
    db.execute("UPDATE meters SET last_interval_end = now() WHERE meter_id = 1000")
    db.execute("UPDATE edges SET session_token = 'u' WHERE edge_id = 'pe001'")
    db.execute("SELECT raised, cleared FROM pipeline_sweep(4, 60)")
    assert db.fetchone() == (2, 2)  # 1000 and pe001 cleared; pe001's meters now silent
    open_now = {(a[0], a[2]) for a in _alarms(db) if not a[3]}
    assert open_now == {("meter_silent", 1001), ("meter_silent", 2000),
                        ("meter_silent", 2001)}
