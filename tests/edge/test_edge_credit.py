"""Prepaid credit on the unit (gridedge.credit) with real SQLite files (credit.db, command
store, journal), the real command executor and task.Clock: the countdown from the radio's
records, register resets, late readings, expiry, an older allowance after a newer one, the
relay decisions as local commands with their events, and restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridedge.commands import CommandExecutor, CommandStore, UnitHooks
from gridedge.credit import CreditSink, CreditStore, UnitCredit
from gridedge.credit.countdown import MeterCredit, apply_allowance, count, wants_open
from gridedge.journal import Event, Journal
from gridedge.radio.relays import RelayOutcome
from gridedge.radio.sink import MemorySink
from gridwire import AlarmKind, Allowance, Command, CommandKind, IntervalRecord
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

NOW = 1_795_000_000
METER = 41
T0 = NOW - 3600  # the anchor reading's interval_end
DAY = 86400


class Radio:
    """The radio link's relay surface; ``confirm = False`` makes the meter not answer."""

    def __init__(self) -> None:
        self.relays: list[tuple[int, bool]] = []
        self.confirm = True

    def relay(self, meter_id: int, open: bool) -> Deferred[RelayOutcome]:
        self.relays.append((meter_id, open))
        if not self.confirm:
            return succeed(RelayOutcome(meter_id, open, False, "timeout", None, 3))
        return succeed(RelayOutcome(meter_id, open, True, "confirmed", open, 1))


class World:
    """The unit's credit path over real files in ``folder``; ``restart()`` is a power cut."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.clock = Clock()
        self.clock.advance(NOW)
        self.radio = Radio()
        self.restart()

    def restart(self) -> None:
        self.journal = Journal(self.folder / "journal.db", max_bytes=8 << 20)
        self.journal.open()
        self.credit: UnitCredit | None = None
        hooks = UnitHooks(radio=lambda: self.radio,  # type: ignore[arg-type, return-value]
                          apply_settings=lambda c: "", reboot=lambda: None,
                          upload_now=lambda: True, set_allowance=self._set_allowance)
        self.executor = CommandExecutor(
            CommandStore(self.folder / "commands.db", clock=self.clock.seconds),
            self.journal, self.clock, hooks)
        self.executor.start()
        self.credit = UnitCredit(CreditStore(self.folder / "credit.db"), self.journal,
                                 self.clock, self.executor.submit_local)
        self.credit.start()
        self.sink = CreditSink(MemorySink(), self.credit)
        self.clock.advance(0)

    def _set_allowance(self, meter_id: int, payload: bytes) -> str:
        assert self.credit is not None
        return self.credit.set_allowance(meter_id, payload)

    def allowance(self, command_id: int, generation: int, wh: int, *, anchor_end: int = T0,
                  anchor_wh: int = 10_000, valid: int = NOW + 3 * DAY) -> None:
        """The cloud's set_allowance command, accepted and executed like any command."""
        payload = Allowance(generation=generation, allowance_wh=wh, anchor_end=anchor_end,
                            anchor_wh=anchor_wh, valid_until=valid).encode()
        self.executor.accept([Command(command_id=command_id, kind=CommandKind.SET_ALLOWANCE,
                                      meter_id=METER, payload=payload)])
        self.clock.advance(0)

    def read(self, end: int, register: int, meter: int = METER) -> None:
        """A record of the radio link, journalled (here: kept in memory) and counted."""
        self.sink.append([IntervalRecord(meter, end, register, 0, 2300, 0, 1000)])
        self.clock.advance(0)

    def events(self) -> list[tuple[int, int, str]]:
        return [(e.kind, e.meter_id, e.detail) for _, e in self.journal.read(1, 1000)
                if isinstance(e, Event)]

    def credit_events(self) -> list[int]:
        return [k for k, _, _ in self.events()
                if k in (AlarmKind.CREDIT_RELAY_OPENED, AlarmKind.CREDIT_RELAY_CLOSED)]

    def outcome_details(self) -> list[str]:
        return [d for k, _, d in self.events() if k == AlarmKind.COMMAND_SUCCEEDED]

    @property
    def state(self) -> MeterCredit:
        assert self.credit is not None
        return self.credit.states[METER]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_countdown_opens_the_relay_at_the_reading_that_uses_it_up(world: World) -> None:
    """500 Wh from the anchor: 200 + 200 leave 100, the third reading (+200) uses it up and
    the relay opens then, once, as a local command with its outcome and a 0x8007 event."""
    w = world
    w.allowance(1, generation=7, wh=500)
    assert "generation 7: 500 Wh" in w.outcome_details()[0]
    w.read(T0 + 900, 10_200)
    w.read(T0 + 1800, 10_400)
    assert w.radio.relays == [] and w.state.remaining_wh == 100
    w.read(T0 + 2700, 10_600)
    assert w.radio.relays == [(METER, True)]
    assert w.state.opened and w.state.used_wh == 600
    assert w.credit_events() == [AlarmKind.CREDIT_RELAY_OPENED]
    opened = next(d for k, _, d in w.events() if k == AlarmKind.CREDIT_RELAY_OPENED)
    assert f"used_wh=600 at={T0 + 2700}" in opened
    assert any(" relay_open meter confirmed" in d for d in w.outcome_details())
    w.read(T0 + 3600, 10_600)  # the relay is open: the register stands still
    assert w.radio.relays == [(METER, True)]  # opened once
    assert w.credit is not None and w.credit.summary() == {"meters": 1, "opened": 1}


def test_register_reset_counts_the_readings_own_value(world: World) -> None:
    """A register lower than the last one restarted from zero: its own value is counted."""
    w = world
    w.allowance(1, generation=1, wh=1000)
    w.read(T0 + 900, 10_300)
    w.read(T0 + 1800, 250)  # reset: 250 Wh since it
    assert w.state.used_wh == 550
    w.read(T0 + 2700, 700)
    assert w.state.used_wh == 1000 and w.state.opened


def test_late_and_duplicate_readings_add_nothing() -> None:
    """Pure rule: a reading not after the last counted one adds nothing (the register is
    cumulative), whatever the order readings come in."""
    state = MeterCredit(METER, 1, 1000, T0, 10_000, NOW + DAY, T0, 10_000)
    state = count(state, T0 + 1800, 10_400)
    late = count(state, T0 + 900, 10_150)
    assert late == state
    assert count(state, T0 + 1800, 10_400) == state  # a duplicate
    assert count(late, T0 + 2700, 10_500).used_wh == 500


def test_late_reading_through_the_sink(world: World) -> None:
    w = world
    w.allowance(1, generation=1, wh=400)
    w.read(T0 + 1800, 10_300)
    w.read(T0 + 900, 10_100)  # late: already in the 10_300
    assert w.state.used_wh == 300 and not w.state.opened


def test_expiry_opens_the_relay_without_readings(world: World) -> None:
    """An allowance past valid_until is used up: the timer opens the relay on time, with no
    reading and no cloud."""
    w = world
    w.allowance(1, generation=1, wh=10_000, valid=NOW + 2 * DAY)
    w.clock.advance(2 * DAY - 1)
    assert w.radio.relays == []
    w.clock.advance(1)
    assert w.radio.relays == [(METER, True)]
    assert w.credit_events() == [AlarmKind.CREDIT_RELAY_OPENED]
    # a newer allowance with credit and a later validity closes it
    w.allowance(2, generation=2, wh=10_000, valid=NOW + 5 * DAY)
    assert w.radio.relays == [(METER, True), (METER, False)]
    assert w.credit_events() == [AlarmKind.CREDIT_RELAY_OPENED, AlarmKind.CREDIT_RELAY_CLOSED]


def test_older_allowance_after_a_newer_one_changes_nothing(world: World) -> None:
    """Generation 5 then 4 (delivered late): 4 is ignored, its outcome says why; 5's count
    goes on.  A newer one after the relay opened closes it and counts from its own anchor,
    including what was read after that anchor."""
    w = world
    w.allowance(1, generation=5, wh=300)
    w.allowance(2, generation=4, wh=100_000)
    assert "generation 4 ignored: generation 5 is newer" in w.outcome_details()[-1]
    assert w.state.generation == 5
    w.read(T0 + 900, 10_300)
    assert w.state.opened and w.radio.relays == [(METER, True)]
    w.allowance(3, generation=3, wh=100_000)  # still older: the relay stays open
    assert w.radio.relays == [(METER, True)]
    # generation 6, anchored at the reading before the last: 150 Wh, 100 already read after it
    w.allowance(4, generation=6, wh=150, anchor_end=T0, anchor_wh=10_200)
    assert w.state.used_wh == 100 and not w.state.opened
    assert w.radio.relays == [(METER, True), (METER, False)]
    w.read(T0 + 1800, 10_350)
    assert w.state.opened and w.radio.relays[-1] == (METER, True)


def test_an_allowance_counts_what_was_read_after_its_anchor(world: World) -> None:
    """Readings before the first allowance are remembered: an allowance anchored before the
    unit's newest reading counts the difference at once (here: used up at once)."""
    w = world
    w.read(T0 + 900, 10_100)
    w.read(T0 + 1800, 10_600)
    w.allowance(1, generation=1, wh=500)
    assert w.state.used_wh == 600 and w.state.opened
    assert w.radio.relays == [(METER, True)]


def test_a_relay_that_does_not_confirm_is_tried_again_at_the_next_reading(world: World) -> None:
    w = world
    w.radio.confirm = False
    w.allowance(1, generation=1, wh=100)
    w.read(T0 + 900, 10_200)
    assert w.radio.relays == [(METER, True)] and not w.state.opened
    w.radio.confirm = True
    w.read(T0 + 1800, 10_200)
    assert w.radio.relays == [(METER, True), (METER, True)] and w.state.opened


def test_the_count_survives_a_power_cut(world: World) -> None:
    """credit.db is durable: after a restart the allowance and the count go on."""
    w = world
    w.allowance(1, generation=2, wh=500)
    w.read(T0 + 900, 10_300)
    w.executor.stop()
    assert w.credit is not None
    w.credit.stop()
    w.journal.close()
    w.restart()
    assert w.state.used_wh == 300 and w.state.generation == 2
    w.read(T0 + 1800, 10_500)
    assert w.state.opened and w.radio.relays == [(METER, True)]


def test_a_decision_left_pending_by_a_crash_is_handed_over_at_start(tmp_path: Path) -> None:
    """Committed in credit.db but never handed to the executor (the unit died in between):
    the next start hands it over."""
    store = CreditStore(tmp_path / "credit.db")
    store.open()
    state = MeterCredit(METER, 1, 100, T0, 10_000, NOW + DAY, T0 + 900, 10_200, 200, True)
    store.save([state], {METER: "relay_open"})
    store.close()
    w = World(tmp_path)
    assert w.radio.relays == [(METER, True)]
    assert w.credit_events() == [AlarmKind.CREDIT_RELAY_OPENED]
    assert w.credit is not None
    _, pending = w.credit.store.load()
    assert pending == {}


def test_an_unreadable_allowance_fails_the_command(world: World) -> None:
    w = world
    w.executor.accept([Command(command_id=9, kind=CommandKind.SET_ALLOWANCE, meter_id=METER,
                               payload=b"\x01\x02")])
    w.clock.advance(0)
    failed = [d for k, _, d in w.events() if k == AlarmKind.COMMAND_FAILED]
    assert failed and failed[0].startswith("9 set_allowance refused:")


def test_pure_rules() -> None:
    a = Allowance(generation=3, allowance_wh=50, anchor_end=T0, anchor_wh=100, valid_until=NOW)
    s = apply_allowance(None, METER, a, (T0 + 900, 140))
    assert s is not None and s.used_wh == 40 and not wants_open(s, NOW - 1)
    assert wants_open(s, NOW)  # expired
    assert apply_allowance(s, METER, a, None) is None  # the same generation again
