"""Commands end to end: `gridcloud api` -> PostgreSQL -> NOTIFY -> `gridcloud serve` -> TLS ->
`gridedge run` (command store, radio link) -> gridsim's meters over a pty -> outcome back through
the journal -> PostgreSQL; real processes, certificates and PostgreSQL, gridsim as ground truth.

Relay frames are counted by gridsim itself (its progress line's "relay frames read": every
RelayCommand frame it read from the pty, answered or not).
"""

from __future__ import annotations

import datetime
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gridcloud.api import keys
from gridedge.cli import EXIT_REBOOT
from gridwire import Flags

from support.api_harness import ApiProcess, query
from support.edge_harness import (
    EDGE_ID,
    Cloud,
    Edge,
    Pki,
    Sim,
    edge_config,
    make_pki,
    running,
)
from support.proxy import FaultProxy
from support.waiting import wait_until

pytestmark = pytest.mark.slow

METERS = 4
FINAL = ("succeeded", "failed", "expired")


@dataclass
class World:
    root: Path
    data: Path
    pki: Pki
    dsn: str
    cloud: Cloud
    api: ApiProcess
    key: str
    sim: Sim | None = None
    edge: Edge | None = None

    @property
    def logs(self) -> tuple[Path, ...]:
        out = [self.cloud.log, self.api.log]
        if self.edge is not None:
            out.append(self.edge.log)
        if self.sim is not None:
            out.append(self.sim.log)
        return tuple(out)

    def post(self, **body: Any) -> dict[str, Any]:
        r = self.api.call("POST", "/v1/commands", self.key, json=body)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    def command(self, command_id: int) -> dict[str, Any]:
        r = self.api.get(f"/v1/commands/{command_id}", self.key)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def final(self, command_id: int, timeout: float = 60) -> dict[str, Any]:
        wait_until(lambda: self.command(command_id)["state"] in FINAL, timeout,
                   f"command {command_id} to finish", self.logs)
        return self.command(command_id)

    def relay_frames(self) -> int:
        """RelayCommand frames gridsim has read from the pty (its latest progress line)."""
        assert self.sim is not None
        found = re.findall(r"\((\d+) relay frames read\)", self.sim.log.read_text())
        return int(found[-1]) if found else 0

    def meters(self) -> list[int]:
        return [int(m) for (m,) in query(self.dsn, "SELECT meter_id FROM meters "
                                         "WHERE edge_id = %s ORDER BY meter_id", (EDGE_ID,))]


@pytest.fixture
def world(tmp_path: Path, pg_dsn: str) -> Iterator[World]:
    data = tmp_path / "data"
    pki = make_pki(tmp_path, data)
    cloud = Cloud(tmp_path, pki, pg_dsn).start()
    api = ApiProcess(pg_dsn, tmp_path / "api.log", {"rate_limit": 1000.0}).start()
    key = keys.create_key(pg_dsn, "operator", ["read", "write"])
    w = World(tmp_path, data, pki, pg_dsn, cloud, api, key)
    try:
        with running(cloud):
            yield w
    finally:
        # A test that restarts the unit (start_unit again) holds a new Edge in w.edge that
        # its own 'running(...)' does not know: stop whatever is current here.
        with running(*(p for p in (w.edge, w.sim) if p is not None)):
            api.stop()


def start_unit(w: World, *, uplink_port: int | None = None, speed: float = 900,
               duration: str = "3d") -> None:
    """gridsim (a simulated interval per second) and the edge; wait for every meter in
    PostgreSQL."""
    if w.sim is None:
        w.sim = Sim(w.root, w.root / "radio", meters=METERS, speed=speed, duration=duration,
                    extra=("--log-every", "0.2"))
        w.sim.proc.stdin = subprocess.PIPE  # gridsim's fault controls
        w.sim.start()
    w.edge = Edge(w.root, w.data, edge_config(
        w.data, uplink_port=uplink_port or w.cloud.port, radio=w.sim.port))
    before = ready_lines(w.edge.log)
    w.edge.start()
    wait_until(lambda: ready_lines(w.edge.log) > before, 60, "the unit's session", w.logs)
    wait_until(lambda: len(w.meters()) == METERS, 60, "every meter in PostgreSQL", w.logs)


def ready_lines(log: Path) -> int:
    return log.read_text().count("uplink ready") if log.exists() else 0


def latest(dsn: str, meter: int, after: datetime.datetime) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT interval_end, energy_wh, flags FROM readings WHERE edge_id = %s "
                 "AND meter_id = %s AND interval_end > %s ORDER BY interval_end",
                 (EDGE_ID, meter, after))


def newest_end(dsn: str, meter: int) -> datetime.datetime:
    (end,), = query(dsn, "SELECT max(interval_end) FROM readings WHERE meter_id = %s", (meter,))
    assert isinstance(end, datetime.datetime)
    return end


def test_relay_open_then_close_through_the_api(world: World) -> None:
    """relay_open through the API: succeeded once the meter confirmed, `meters` shows it open,
    the meter's later readings carry the relay flag with a frozen register (as in gridsim's
    ground truth); relay_close restores consumption.  Then set_config saves the setting on the
    data partition, and reboot stops the unit cleanly, which comes back healthy."""
    w = world
    start_unit(w)
    with running(w.edge, w.sim):
        meter = w.meters()[0]
        before = newest_end(w.dsn, meter)
        created = w.post(action="relay_open", meter_id=meter, idempotency_key="open-1")
        assert created["state"] == "queued" and created["edge_id"] == EDGE_ID
        again = w.post(action="relay_open", meter_id=meter, idempotency_key="open-1")
        assert again["id"] == created["id"]  # the same key makes one command
        done = w.final(created["id"])
        assert done["state"] == "succeeded", done
        assert "confirmed" in done["reason"]
        for stamp in ("sent_at", "acknowledged_at", "succeeded_at"):
            assert done[stamp] is not None, done
        assert w.api.get(f"/v1/meters/{meter}", w.key).json()["relay"] == "open"

        # Readings after the switch: relay flag set, register frozen (zero consumption).
        wait_until(lambda: len([r for r in latest(w.dsn, meter, before)
                                if r[2] & Flags.RELAY_OPEN]) >= 3, 60,
                   "three readings with the relay open", w.logs)
        opened = [r for r in latest(w.dsn, meter, before) if r[2] & Flags.RELAY_OPEN]
        assert len({r[1] for r in opened[1:]}) == 1, opened  # no energy after the first
        assert w.api.get(f"/v1/meters/{meter}", w.key).json()["relay"] == "open"
        assert w.relay_frames() == 1

        closing = w.post(action="relay_close", meter_id=meter)
        assert w.final(closing["id"])["state"] == "succeeded"
        closed_at = newest_end(w.dsn, meter)
        wait_until(lambda: len(latest(w.dsn, meter, closed_at)) >= 3, 60,
                   "three readings after the close", w.logs)
        after = latest(w.dsn, meter, closed_at)
        assert not any(r[2] & Flags.RELAY_OPEN for r in after[1:])
        assert after[-1][1] > after[1][1], after  # consuming again
        assert w.relay_frames() == 2

        # gridsim's ground truth agrees with what PostgreSQL holds for those intervals.
        from gridsim.truth import GroundTruth
        assert w.sim is not None
        stored = {int(r[0].timestamp()): (r[1], r[2]) for r in latest(w.dsn, meter, before)}
        with GroundTruth(w.sim.truth_path) as truth:
            truth_rows = {r.interval_end: (r.energy_wh, r.flags) for r in truth.records(meter)
                          if r.interval_end in stored}
        assert truth_rows == stored

        # Both outcomes and every state are on the list, newest first.
        listed = w.api.get(f"/v1/commands?meter_id={meter}", w.key).json()["items"]
        assert [c["id"] for c in listed] == [closing["id"], created["id"]]

        # The unit's settings, saved on its data partition; then a reboot: a clean stop.
        config = w.post(action="set_config", edge_id=EDGE_ID, config={"uplink.heartbeat": 7})
        assert w.final(config["id"])["state"] == "succeeded"
        assert "heartbeat = 7.0" in (w.data / "settings.toml").read_text()
        reboot = w.post(action="reboot", edge_id=EDGE_ID)
        assert w.edge is not None and w.edge.proc.popen is not None
        # Stopped like on SIGTERM (journal closed), then the exit status that asks the
        # firmware's service wrapper (root; gridedge is not) to reboot the unit.
        assert w.edge.proc.popen.wait(30) == EXIT_REBOOT
        assert "gridedge stopped" in w.edge.log.read_text()
        start_unit(w)  # what init does after the reboot
        assert w.final(reboot["id"])["state"] == "succeeded"
        wait_until(lambda: w.edge is not None and w.edge.health()[0] == 0, 30,
                   "a healthy unit after the reboot", w.logs)
        assert w.edge.proc.stop() == 0


def test_offline_command_delivered_after_reconnect_expired_one_never(world: World) -> None:
    """Created while the unit is offline: delivered and executed after it reconnects; one whose
    expiry passed meanwhile is never executed (no relay frame for it)."""
    w = world
    start_unit(w)
    assert w.edge is not None and w.edge.proc.stop() == 0
    with running(w.sim):
        meter = w.meters()[1]
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
        short = w.post(action="relay_open", meter_id=meter,
                       expires_at=soon.isoformat().replace("+00:00", "Z"))
        later = w.post(action="read_now", meter_id=meter)
        wait_until(lambda: datetime.datetime.now(datetime.UTC) > soon, 10, "the expiry", ())
        start_unit(w)
        with running(w.edge):
            assert w.final(later["id"])["state"] == "succeeded"
            gone = w.final(short["id"])
            assert gone["state"] == "expired" and gone["acknowledged_at"] is None, gone
            assert w.relay_frames() == 0


def test_two_serve_nodes_reach_the_unit_on_the_other_within_a_second(world: World) -> None:
    """With a second `gridcloud serve` node on the same PostgreSQL, a command created through
    the API reaches (is accepted by) the unit on whichever node holds it within a second."""
    w = world
    (w.root / "other").mkdir()
    other = Cloud(w.root / "other", w.pki, w.dsn).start()
    start_unit(w, uplink_port=other.port)  # the unit is on the second node
    with running(w.edge, w.sim, other):
        meter = w.meters()[2]
        for _ in range(3):
            created = w.post(action="read_now", meter_id=meter)
            wait_until(lambda c=created: w.command(c["id"])["acknowledged_at"] is not None, 10,
                       "the unit to accept it", w.logs)
            (delay,), = query(w.dsn, "SELECT extract(epoch FROM acknowledged_at - created_at) "
                              "FROM commands WHERE id = %s", (created["id"],))
            assert float(delay) < 1.0, delay
            assert w.final(created["id"])["state"] == "succeeded"


def test_duplicated_delivery_and_kill9_execute_once(world: World) -> None:
    """The unit stores a command but its acceptance never reaches the cloud, and the serve node
    holding the session dies (kill -9): the unit's next session, on the other node, delivers it
    again and it is not executed again.  kill -9 of the unit while a relay command is in
    flight: after the restart it is not repeated.  One relay frame each."""
    w = world
    (w.root / "other").mkdir()
    other = Cloud(w.root / "other", w.pki, w.dsn).start()
    with FaultProxy("127.0.0.1", w.cloud.port) as proxy, running(other):
        start_unit(w, uplink_port=proxy.port)
        with running(w.edge, w.sim):
            meter = w.meters()[0]
            proxy.hold_up(True)  # the cloud hears nothing from the unit from now on
            created = w.post(action="relay_open", meter_id=meter)
            assert w.edge is not None
            wait_until(lambda: f"command {created['id']}: relay_open" in w.edge.log.read_text(),
                       30, "the unit to execute it", w.logs)
            assert w.command(created["id"])["acknowledged_at"] is None
            w.cloud.proc.kill9()  # the node holding the session dies with the command out
            proxy.retarget("127.0.0.1", other.port)  # the load balancer's next choice
            proxy.cut()
            proxy.hold_up(False)
            done = w.final(created["id"])
            assert done["state"] == "succeeded", done
            assert done["deliveries"] >= 2, done
            assert "delivered again" in w.edge.log.read_text()
            assert w.relay_frames() == 1

            # kill -9 while the relay command is in flight: the meter is silent, so the unit
            # sent the frame and waits for a confirmation that cannot come before it dies.
            frames = w.relay_frames()
            assert w.sim is not None and w.sim.proc.popen is not None
            stdin = w.sim.proc.popen.stdin
            assert stdin is not None
            stdin.write(f"silence {meter} 7200\n".encode())
            stdin.flush()
            wait_until(lambda: f"silence {meter} 7200 done" in w.sim.log.read_text(), 10,
                       "gridsim to silence the meter", w.logs)
            closing = w.post(action="relay_close", meter_id=meter)
            wait_until(lambda: w.relay_frames() > frames, 30, "the relay frame on the pty",
                       w.logs)
            w.edge.proc.kill9()
            start_unit(w, uplink_port=proxy.port)
            finished = w.final(closing["id"])
            assert finished["state"] == "failed", finished
            assert "interrupted by a restart" in finished["reason"], finished
            lines = w.sim.log.read_text().count("relay frames read")
            wait_until(lambda: w.sim is not None and w.sim.log.read_text().count(
                "relay frames read") > lines, 10, "gridsim's next progress line", w.logs)
            assert w.relay_frames() == frames + 1  # never sent again


def test_flood_of_ten_thousand_commands_in_bounded_windows_readings_keep_flowing(
        world: World) -> None:
    """10,000 commands queued at once for one unit go out at most a window (32) at a time,
    all finish exactly once, and the meters' readings keep arriving meanwhile."""
    w = world
    start_unit(w)
    with running(w.edge, w.sim):
        flood = 10_000
        readings_before = query(w.dsn, "SELECT count(*) FROM readings")[0][0]
        query(w.dsn, "INSERT INTO commands (edge_id, action, expires_at) SELECT %s, "
              "'upload_now', now() + interval '1 hour' FROM generate_series(1, %s)",
              (EDGE_ID, flood))
        most_out = 0
        readings_midway = None

        def progress() -> bool:
            nonlocal most_out, readings_midway
            (out, done), = query(w.dsn, "SELECT count(*) FILTER (WHERE state = 'sent'), "
                                 "count(*) FILTER (WHERE state = 'succeeded') FROM commands")
            most_out = max(most_out, int(out))
            if readings_midway is None and done >= flood // 2:
                readings_midway = query(w.dsn, "SELECT count(*) FROM readings")[0][0]
            return int(done) == flood

        started = datetime.datetime.now(datetime.UTC)
        wait_until(progress, 150, "every command of the flood to succeed", w.logs)
        took = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
        assert 0 < most_out <= 32, most_out
        assert readings_midway is not None and readings_midway > readings_before
        (events, deliveries), = query(
            w.dsn, "SELECT (SELECT count(*) FROM events WHERE kind = 32784), "
            "(SELECT sum(deliveries) FROM commands)")
        assert events == flood and deliveries == flood  # each sent once, finished once
        wait_until(lambda: query(w.dsn, "SELECT count(*) FROM readings")[0][0] >
                   readings_midway + METERS, 60, "readings after the flood", w.logs)
        print(f"\n{flood} commands in {took:.1f} s ({flood / took:.0f}/s), at most {most_out} "
              "unaccepted at once")
