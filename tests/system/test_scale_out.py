"""Scale-out: two ``gridcloud serve`` nodes and two ``gridcloud api`` processes behind the real
HAProxy with the shipped configuration, 200 loadgen edges and one real unit (gridsim -> pty ->
``gridedge run``), all through HAProxy on loopback.  One node gets kill -9 in mid-stream.

What must hold: the edges spread over both nodes; after the kill every edge that was on the dead
node is back, on the other one, through the same HAProxy address; nothing is lost or doubled
(every edge's readings are seqs 1..last exactly once, the unit's match gridsim's ground truth);
the API answers through HAProxy all along; a command posted after the kill still reaches the
real unit (through the surviving node) and succeeds on its meter; and the cost of the failover
handshakes is measured (the nodes do not share TLS session keys, so a moved edge pays one full
handshake).  Then a
rolling restart (the killed node back, the other drained in HAProxy, SIGTERM, restarted) moves
every edge once more, timed, still losing nothing.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from gridcloud import migrations
from prometheus_client.parser import text_string_to_metric_families

from support.edge_harness import (
    BIN,
    SERVER_NAME,
    Edge,
    Proc,
    Sim,
    assert_exactly_once,
    edge_config,
    free_port,
    make_pki,
    running,
    stored_rows,
)
from support.haproxy import Backend, HAProxy, haproxy_binary
from support.processes import python_env
from support.waiting import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(haproxy_binary() is None,
                       reason="haproxy is not installed (Debian: apt-get install haproxy)"),
]

FLEET = 200


def serve_node(root: Path, name: str, backend: Backend, pki_dir: Path, dsn: str) -> Proc:
    config = root / f"{name}.toml"
    config.write_text(
        "[server]\n"
        f'listen = "haproxy:tcp:{backend.port}:interface=127.0.0.1:backlog=1024"\n'
        f'cert = "{pki_dir / "server.pem"}"\nkey = "{pki_dir / "server.key"}"\n'
        f'ca = "{pki_dir / "ca.pem"}"\n'
        f'metrics_listen = "tcp:{backend.health}:interface=127.0.0.1"\n'
        f'[database]\ndsn = "{dsn}"\npool_size = 3\n')
    return Proc(name, [str(BIN / "gridcloud"), "serve", "--config", str(config)],
                root / f"{name}.log", env={"GRIDCLOUD_LOG_FORMAT": "json"})


def api_process(root: Path, name: str, backend: Backend, dsn: str) -> Proc:
    config = root / f"{name}.toml"
    config.write_text(
        "[api]\n"
        f'listen = "tcp:{backend.port}:interface=127.0.0.1"\n'
        f'metrics_listen = "tcp:{backend.health}:interface=127.0.0.1"\n'
        f'[database]\ndsn = "{dsn}"\npool_size = 2\n')
    return Proc(name, [str(BIN / "gridcloud"), "api", "--config", str(config)],
                root / f"{name}.log")


def metrics(backend: Backend) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{backend.health}/metrics", timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


def unit(port: int) -> dict[str, float]:
    """The unit's /metrics, ``name{labels}`` -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def live(backend: Backend) -> int:
    try:
        return int(metrics(backend)["gridcloud_sessions_live"])
    except (requests.RequestException, KeyError):
        return -1


def holds(log: Path, unit: str) -> bool:
    """Whether a node holds ``unit`` now, from its JSON log: the lines with ``"unit"`` (the
    one grep an operator runs), connections minus disconnections."""
    lines = [json.loads(line)["msg"] for line in log.read_text().splitlines()
             if line.startswith("{") and json.loads(line).get("unit") == unit]
    return sum(" connected from " in m for m in lines) > sum(" disconnected" in m for m in lines)


def fleet_status(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def unit_meter(dsn: str) -> int:
    """One meter of the real unit (gridsim's), as the cloud knows it."""
    with contextlib.closing(psycopg2.connect(dsn)) as db, db.cursor() as cur:
        cur.execute("SELECT min(meter_id) FROM meters WHERE edge_id = 'edge-system-1'")
        (meter,) = cur.fetchone()
    return int(meter)


def send_command(api_port: int, key: str, meter: int) -> int:
    r = requests.post(f"http://127.0.0.1:{api_port}/v1/commands",
                      headers={"Authorization": f"Bearer {key}"},
                      json={"action": "read_now", "meter_id": meter}, timeout=10)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def wait_command(api_port: int, key: str, command: int, logs: tuple[Path, ...]
                 ) -> dict[str, Any]:
    """The command once final (succeeded, failed or expired), read through HAProxy."""
    def state() -> dict[str, Any]:
        r = requests.get(f"http://127.0.0.1:{api_port}/v1/commands/{command}",
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    wait_until(lambda: state()["state"] in ("succeeded", "failed", "expired"), 60,
               f"command {command} to reach the unit and finish", logs)
    return state()


@contextlib.contextmanager
def stopped_last(*procs: Proc) -> Iterator[None]:
    with running(*procs):
        yield


def test_two_nodes_behind_haproxy_survive_kill_9_of_one(tmp_path: Path, pg_dsn: str) -> None:
    """200 loadgen edges + one real unit over two serve nodes behind HAProxy; kill -9 of the
    node holding the unit: all move to the other node, nothing lost or doubled, API answers."""
    root, data = tmp_path, tmp_path / "data"
    pki = make_pki(root, data)
    migrations.migrate(pg_dsn)
    lb = HAProxy(root, (Backend(), Backend()), (Backend(), Backend()))
    nodes = [serve_node(root, f"serve{i}", b, pki.dir, pg_dsn) for i, b in enumerate(lb.serve, 1)]
    apis = [api_process(root, f"api{i}", b, pg_dsn) for i, b in enumerate(lb.api, 1)]
    key = subprocess.run([str(BIN / "gridcloud"), "apikey", "create", "ops", "--dsn", pg_dsn,
                          "--scope", "read", "--scope", "write"],
                         capture_output=True, text=True, check=True).stdout.strip()
    status = root / "fleet.json"
    fleet = Proc("fleet", [sys.executable, "-m", "support.fleet",
                           "--endpoint", f"tcp:127.0.0.1:{lb.edge_port}", "--pki", str(pki.dir),
                           "--server-name", SERVER_NAME, "--edges", str(FLEET),
                           "--status", str(status)], root / "fleet.log", env=python_env())
    logs = (root / "serve1.log", root / "serve2.log", lb.log, root / "fleet.log")
    with running(fleet, *nodes, *apis, lb):
        for proc in (*nodes, *apis):
            proc.start()
        lb.start()
        wait_until(lb.all_up, 60, "HAProxy to see both nodes and both API processes up", logs)
        fleet.start()
        sim = Sim(root, root / "radio", meters=12, speed=2400, duration="12h").start()
        unit_metrics = free_port()
        edge = Edge(root, data, edge_config(
            data, uplink_port=lb.edge_port, radio=sim.port,
            extra=f'metrics_listen = "tcp:{unit_metrics}:interface=127.0.0.1"\n')).start()
        logs = (*logs, edge.log)
        with running(edge, sim):
            wait_until(lambda: fleet_status(status).get("welcomed") == FLEET, 90,
                       f"all {FLEET} fleet edges to be welcomed", logs)
            wait_until(lambda: live(lb.serve[0]) + live(lb.serve[1]) == FLEET + 1, 60,
                       "every edge to hold a session on some node", logs)
            spread = [live(b) for b in lb.serve]
            assert min(spread) >= FLEET // 4, f"edges not spread over the nodes: {spread}"

            # The node holding the real unit dies in mid-stream.
            before = stored_rows(pg_dsn)
            wait_until(lambda: stored_rows(pg_dsn) > before, 60, "the unit's readings to flow",
                       logs)
            held = [holds(n.log, "edge-system-1") for n in nodes]
            assert sorted(held) == [False, True], held
            victim = held.index(True)
            survivor = 1 - victim
            moved = live(lb.serve[victim]) - 1  # fleet edges on the doomed node
            full_before = fleet_status(status)["handshakes"]["full"]
            killed_at = time.monotonic()
            nodes[victim].kill9()
            wait_until(lambda: live(lb.serve[survivor]) == FLEET + 1, 90,
                       "every edge to reconnect to the surviving node", logs)
            failover = time.monotonic() - killed_at
            wait_until(lambda: holds(nodes[survivor].log, "edge-system-1"), 30,
                       "the unit's session on the surviving node", logs)
            wait_until(lambda: fleet_status(status).get("connected") == FLEET, 30,
                       "the fleet to be connected again", logs)

            # The unit's own /metrics (loopback) saw it: frames, meters, the reconnection.
            wait_until(lambda: unit(unit_metrics).get("gridedge_uplink_connected") == 1, 30,
                       "the unit's metrics to show the uplink back", logs)
            seen = unit(unit_metrics)
            assert seen["gridedge_radio_frames_ok_total"] > 0
            assert seen["gridedge_radio_meters"] == 12
            assert seen['gridedge_uplink_handshakes_total{kind="full"}'] >= 2  # before and after
            assert seen['gridedge_uplink_bytes_today{direction="up"}'] > 0
            assert seen['gridedge_part_restarts_total{part="uplink"}'] == 0
            assert seen["gridedge_journal_oldest_pending_age_seconds"] >= 0

            # The API answers through HAProxy (its processes never stopped).
            answer = requests.get(f"http://127.0.0.1:{lb.api_port}/v1/edges?limit=5",
                                  headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert answer.status_code == 200, answer.text

            # A command still reaches the real unit: posted through HAProxy to the API, picked
            # up by the surviving node (the one holding the unit now; the dead node's LISTEN
            # died with it), executed on the meter over gridsim's radio, its outcome stored.
            command = send_command(lb.api_port, key, unit_meter(pg_dsn))
            final = wait_command(lb.api_port, key, command, logs)
            assert final["state"] == "succeeded", final
            assert final["sent_at"] is not None and final["succeeded_at"] is not None, final

            # A rolling restart: the dead node comes back; the other is drained in HAProxy (no
            # new edges), stopped with SIGTERM (its edges move over), restarted, made ready.
            dead = f"serve/serve{victim + 1}"
            wait_until(lambda: lb.states()[dead].startswith("DOWN"), 30,
                       "HAProxy's health checks to mark the killed node down", logs)
            nodes[victim].start()
            wait_until(lb.all_up, 30, "HAProxy to see the restarted node up", logs)
            name = f"serve/serve{survivor + 1}"
            lb.command(f"set server {name} state drain")
            restart_at = time.monotonic()
            assert nodes[survivor].stop() == 0
            wait_until(lambda: live(lb.serve[victim]) == FLEET + 1, 90,
                       "every edge to move to the restarted node", logs)
            rolled = time.monotonic() - restart_at
            nodes[survivor].start()
            lb.command(f"set server {name} state ready")
            wait_until(lb.all_up, 30, "HAProxy to see both nodes up again", logs)

            # Stop making readings; every edge gets all it made acknowledged.
            assert fleet.popen is not None
            fleet.popen.send_signal(signal.SIGUSR1)
            wait_until(lambda: fleet_status(status).get("done") is True, 90,
                       "the fleet to have everything acknowledged", logs)
            wait_until(sim.complete, 120, "gridsim to finish", logs)
            total = sum(c for c, _ in sim.expected().values())
            wait_until(lambda: stored_rows(pg_dsn) >= total, 120, "the unit's records", logs)
            wait_until(lambda: edge.pending() == 0, 120, "the unit's journal to drain", logs)
            assert_exactly_once(pg_dsn, sim)

    final = fleet_status(status)
    with contextlib.closing(psycopg2.connect(pg_dsn)) as db, db.cursor() as cur:
        cur.execute("SELECT edge_id, count(*), count(DISTINCT seq), min(seq), max(seq) "
                    "FROM readings WHERE edge_id LIKE 'fleet-%' GROUP BY edge_id")
        stored = {e: (c, d, lo, hi) for e, c, d, lo, hi in cur.fetchall()}
    assert len(stored) == FLEET
    for edge_id, made in final["made"].items():
        assert final["acked"][edge_id] == made, edge_id
        assert stored[edge_id] == (made, made, 1, made), (edge_id, stored[edge_id], made)
    handshakes, sizes = final["handshakes"], final["handshake_bytes"]
    reconnect_full = handshakes["full"] - full_before
    # The moved edges' sessions were the dead node's: each paid a full handshake on the other.
    assert reconnect_full >= moved
    per_full = sizes["full"] / handshakes["full"]
    print(f"\nspread {spread}; kill -9: {moved} fleet edges + the unit moved in {failover:.1f} s; "
          f"rolling restart: {FLEET + 1} edges moved in {rolled:.1f} s; "
          f"{sum(final['made'].values())} fleet readings exactly once; "
          f"handshakes full {handshakes['full']} (mean {per_full:.0f} B to Welcome), "
          f"resumed {handshakes['resumed']}; failed connection attempts {final['failed_connects']}")
