"""The unit's command path with real SQLite files (command store, journal), gridwire's real
CloudSession in memory and task.Clock: accepted means stored, executed once per id (second
deliveries, restarts), expiry checked before execution, outcomes journalled in the readings'
sequence space, local commands, saved settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from gridedge import config as edge_config
from gridedge.commands import CommandExecutor, CommandStore, Outcome, UnitHooks
from gridedge.commands import settings as saved
from gridedge.commands.store import LOCAL_BASE
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Event, Journal
from gridedge.radio.readnow import ReadOutcome
from gridedge.radio.relays import RelayOutcome
from gridedge.uplink.link import Link, LinkSettings
from gridwire import (
    AlarmKind,
    CloudSession,
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    Hello,
    Message,
    Welcome,
)
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

NOW = 1_795_000_000.0


class Radio:
    """The radio link's command surface, answering as the test says (the real link is
    exercised over a pty with gridsim in tests/system/test_commands_e2e.py)."""

    def __init__(self) -> None:
        self.relays: list[tuple[int, bool]] = []
        self.hold: Deferred[RelayOutcome] | None = None

    def relay(self, meter_id: int, open: bool) -> Deferred[RelayOutcome]:
        self.relays.append((meter_id, open))
        if self.hold is not None:
            return self.hold
        return succeed(RelayOutcome(meter_id, open, True, "confirmed", open, 1))

    def read_now(self, meter_id: int) -> Deferred[ReadOutcome]:
        return succeed(ReadOutcome(meter_id, True, "read", 1_794_999_600, 1234))


class World:
    """An executor over real files in ``folder``; ``restart()`` is a power cut and boot."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.clock = Clock()
        self.clock.advance(NOW)
        self.radio = Radio()
        self.reboots = 0
        self.applied: list[Mapping[str, float]] = []
        self.restart()

    def restart(self) -> None:
        self.journal = Journal(self.folder / "journal.db", max_bytes=8 << 20)
        self.journal.open()
        hooks = UnitHooks(radio=lambda: self.radio,  # type: ignore[arg-type, return-value]
                          apply_settings=self._apply, reboot=self._reboot,
                          upload_now=lambda: True)
        self.executor = CommandExecutor(
            CommandStore(self.folder / "commands.db", clock=self.clock.seconds),
            self.journal, self.clock, hooks)
        self.executor.start()

    def _apply(self, changes: Mapping[str, float]) -> str:
        self.applied.append(dict(changes))
        return "saved"

    def _reboot(self) -> None:
        self.reboots += 1

    def outcomes(self) -> list[tuple[int, int, str]]:
        """(kind, meter, detail) of the command outcomes in the journal."""
        return [(e.kind, e.meter_id, e.detail) for _, e in self.journal.read(1, 1000)
                if isinstance(e, Event) and e.kind >= AlarmKind.COMMAND_SUCCEEDED]


class Cloud:
    """The cloud end of an in-memory uplink (gridwire's CloudSession)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.session = CloudSession()
        self.got: list[Message] = []
        self.link: Link | None = None

    def from_edge(self, data: bytes) -> None:
        for message in self.session.receive_data(data):
            self.got.append(message)
            if isinstance(message, Hello):
                version = self.session.choose_version() or 1
                self.to_edge(Welcome(version=version, server_time=0, last_acked_seq=0,
                                     heartbeat_interval=300, max_in_flight=8))

    def to_edge(self, *messages: Message) -> None:
        assert self.link is not None
        self.link.data_received(b"".join(self.session.send(m) for m in messages))
        self.clock.advance(0)  # the executor starts once the acceptances are out

    def accepted(self) -> list[int]:
        return [m.command_id for m in self.got
                if isinstance(m, CommandResult) and m.status == CommandStatus.ACCEPTED]


def uplink(world: World) -> Cloud:
    cloud = Cloud(world.clock)
    link_settings = LinkSettings.from_config(
        EdgeConfig(firmware_version="1.0", boot_slot="A"),
        UplinkConfig(host="cloud.test", port=7400, server_name="cloud.test", tls_dir=Path("tls"),
                     batch_linger=0.0))
    link = Link(world.journal, link_settings, world.clock, cloud.from_edge, lambda: None,
                commands=world.executor)
    cloud.link = link
    link.connected()
    return cloud


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def relay_open(command_id: int, meter: int = 41, **kw: Any) -> Command:
    return Command(command_id=command_id, kind=CommandKind.RELAY_OPEN, meter_id=meter, **kw)


def test_accepted_after_storing_and_a_second_delivery_is_not_executed(world: World) -> None:
    """Commands of one read are stored together, then each is answered ACCEPTED; the same ids
    delivered again (the acceptance was lost) are accepted again and not executed again."""
    cloud = uplink(world)
    cloud.to_edge(relay_open(7), relay_open(8, meter=42))
    assert cloud.accepted() == [7, 8]
    assert world.executor.store.get(7) is not None
    assert world.radio.relays == [(41, True), (42, True)]
    cloud.to_edge(relay_open(7))
    assert cloud.accepted() == [7, 8, 7]
    assert world.radio.relays == [(41, True), (42, True)]
    kinds = world.outcomes()
    assert kinds == [(AlarmKind.COMMAND_SUCCEEDED, 41, "7 relay_open meter confirmed: relay open"),
                     (AlarmKind.COMMAND_SUCCEEDED, 42, "8 relay_open meter confirmed: relay open")]


def test_expired_before_execution_is_not_executed(world: World) -> None:
    """A command whose expiry has passed when its turn comes is reported expired, not run."""
    cloud = uplink(world)
    cloud.to_edge(relay_open(9, expires_at=int(NOW) - 1))
    assert cloud.accepted() == [9]
    assert world.radio.relays == []
    ((kind, meter, detail),) = world.outcomes()
    assert kind == AlarmKind.COMMAND_EXPIRED and meter == 41
    assert detail.startswith("9 relay_open expired at ")


def test_one_at_a_time_and_interrupted_command_not_repeated_after_a_crash(world: World) -> None:
    """A relay in flight when the unit dies is not switched again after the restart: it is
    reported failed (interrupted); the command queued behind it runs after the restart."""
    world.radio.hold = Deferred()  # the meter's confirmation never comes: the unit dies first
    cloud = uplink(world)
    cloud.to_edge(relay_open(10), relay_open(11, meter=43))
    assert world.radio.relays == [(41, True)]  # one at a time
    world.executor.store.close()  # kill -9: nothing more is written
    world.journal.close()
    world.radio.hold = None
    world.restart()
    assert world.radio.relays == [(41, True), (43, True)]
    outcomes = world.outcomes()
    assert (AlarmKind.COMMAND_FAILED, 41,
            "10 relay_open interrupted by a restart of the unit while executing; "
            "not repeated") in outcomes
    assert (AlarmKind.COMMAND_SUCCEEDED, 43, "11 relay_open meter confirmed: relay open") \
        in outcomes


def test_submit_local_runs_like_a_cloud_command_and_reports_to_the_cloud(world: World) -> None:
    """The local page's entry: a local id from 2^62, executed, its outcome journalled; bad
    requests are refused at once."""
    got: list[Outcome] = []
    world.executor.submit_local("relay_close", 41).addCallback(got.append)
    world.executor.submit_local("read_now", 41, NOW + 60).addCallback(got.append)
    world.executor.submit_local("upload_now").addCallback(got.append)
    assert [o.status for o in got] == ["succeeded"] * 3
    assert got[0].command_id == LOCAL_BASE and got[1].command_id == LOCAL_BASE + 1
    assert "1234 Wh" in got[1].reason
    assert world.radio.relays == [(41, False)]
    assert [d.split(" ")[1] for _, _, d in world.outcomes()] == \
        ["relay_close", "read_now", "upload_now"]
    late: list[Outcome] = []
    world.executor.submit_local("relay_open", 41, NOW - 5).addCallback(late.append)
    assert late[0].status == "expired"
    for bad in (("relay_open", 0), ("reboot", 5), ("fly", 1)):
        with pytest.raises(ValueError):
            world.executor.submit_local(*bad)
    with pytest.raises(ValueError, match=r"uplink\.heartbeat"):
        world.executor.submit_local("set_config", config={"uplink.heartbeat": 1})


def test_set_config_and_reboot(world: World) -> None:
    """set_config hands whitelisted settings to the unit; an unknown setting is refused; a
    reboot's outcome is journalled before the unit is asked to reboot."""
    cloud = uplink(world)
    cloud.to_edge(Command(command_id=20, kind=CommandKind.SET_CONFIG,
                          payload=b'{"uplink.heartbeat": 30}'),
                  Command(command_id=21, kind=CommandKind.SET_CONFIG,
                          payload=b'{"uplink.host": "evil.example"}'))
    assert world.applied == [{"uplink.heartbeat": 30.0}]
    outcomes = world.outcomes()
    assert outcomes[0] == (AlarmKind.COMMAND_SUCCEEDED, 0, "20 set_config saved")
    assert outcomes[1][0] == AlarmKind.COMMAND_FAILED and "uplink.host" in outcomes[1][2]
    cloud.to_edge(Command(command_id=22, kind=CommandKind.REBOOT))
    assert world.reboots == 1 and world.outcomes()[-1][2].startswith("22 reboot")


def test_saved_settings_survive_and_override_the_file(tmp_path: Path) -> None:
    """Settings saved by set_config are laid over gridedge.toml at load; a damaged file is
    ignored rather than keep the unit from starting."""
    data = tmp_path / "data"
    toml = tmp_path / "gridedge.toml"
    toml.write_text(f'data_dir = "{data}"\n[uplink]\nhost = "c.test"\nport = 7400\n'
                    "heartbeat = 60\n")
    assert edge_config.load(toml).uplink.heartbeat == 60
    saved.save(data / saved.FILE_NAME, {"uplink.heartbeat": 20.0})
    saved.save(data / saved.FILE_NAME, {"uplink.batch_linger": 3.0})
    loaded = edge_config.load(toml)
    assert (loaded.uplink.heartbeat, loaded.uplink.batch_linger) == (20.0, 3.0)
    (data / saved.FILE_NAME).write_text("[uplink]\nport = 1\n")
    assert edge_config.load(toml).uplink.heartbeat == 60
    with pytest.raises(ValueError, match=r"not in 5\.\.3600"):
        saved.parse(b'{"uplink.heartbeat": 4000}')
    with pytest.raises(ValueError, match="must be a number"):
        saved.parse(b'{"uplink.heartbeat": true}')
