"""The supervisor (one_for_one): a failing part restarts with growing delays while the others
keep running; a stable part's failure count resets; stop is in reverse order and cancels
pending restarts."""

from __future__ import annotations

from gridedge.supervisor import Crashed, Supervisor
from twisted.application import service
from twisted.internet.task import Clock


class Part(service.Service):
    """A part that records its life and fails on demand."""

    def __init__(self, name: str, log: list[str], crashed: Crashed, fail_start: bool) -> None:
        self.name = name
        self.log = log
        self.crashed = crashed
        self.fail_start = fail_start

    def startService(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail_start:
            raise OSError(f"{self.name}: no such device")
        super().startService()

    def stopService(self) -> None:
        self.log.append(f"stop {self.name}")
        super().stopService()


def make(clock: Clock, fail: dict[str, int]) -> tuple[Supervisor, list[str], dict[str, Part]]:
    """A supervisor with parts a, b, c; part X fails its first fail[X] starts."""
    log: list[str] = []
    current: dict[str, Part] = {}
    sup = Supervisor(clock, initial_delay=1.0, max_delay=8.0, stable_after=60.0)
    for name in ("a", "b", "c"):
        def factory(crashed: Crashed, name: str = name) -> Part:
            failing = fail.get(name, 0) > 0
            if failing:
                fail[name] -= 1
            current[name] = Part(name, log, crashed, failing)
            return current[name]
        sup.supervise(name, factory)
    return sup, log, current


def test_failed_start_is_retried_with_backoff_others_run() -> None:
    """b fails 3 starts: retried after 1, 2, 4 s; a and c run all along."""
    clock = Clock()
    sup, log, parts = make(clock, {"b": 3})
    sup.startService()
    assert log == ["start a", "start b", "start c"]
    assert parts["a"].running and parts["c"].running and sup.child("b") is None
    times = []
    for _ in range(40):
        clock.advance(0.5)
        if log[-1] == "start b":
            times.append(clock.seconds())
            log.append("-")
    assert times == [1.0, 3.0, 7.0]
    assert sup.child("b") is parts["b"] and parts["b"].running
    status = {s.name: s for s in sup.status()}
    assert status["b"].restarts == 3 and "no such device" in (status["b"].last_error or "")
    assert "stop a" not in log and "stop c" not in log


def test_runtime_crash_restarts_only_that_part() -> None:
    """A part calling crashed() is stopped and rebuilt; the others are never stopped."""
    clock = Clock()
    sup, log, parts = make(clock, {})
    sup.startService()
    old = parts["b"]
    old.crashed(RuntimeError("serial port vanished"))
    assert "stop b" in log and not old.running
    clock.advance(1.0)
    assert parts["b"] is not old and parts["b"].running
    old.crashed("late report from the old instance")  # ignored: that generation is gone
    clock.advance(10)
    assert log.count("start b") == 2
    assert "stop a" not in log and "stop c" not in log


def test_failure_count_resets_after_stable_run() -> None:
    """After running stable_after seconds, the next crash waits the initial delay again."""
    clock = Clock()
    sup, log, parts = make(clock, {})
    sup.startService()
    for _ in range(3):
        parts["a"].crashed("boom")
        clock.advance(8.0)
    clock.advance(61)
    parts["a"].crashed("boom")
    before = log.count("start a")
    clock.advance(1.0)
    assert log.count("start a") == before + 1


def test_stop_reverse_order_and_cancels_pending_restart() -> None:
    """stopService stops c, then a (b is waiting to restart and never comes back)."""
    clock = Clock()
    sup, log, _ = make(clock, {"b": 100})
    sup.startService()
    log.clear()
    d = sup.stopService()
    assert log == ["stop c", "stop a"]
    assert d.called
    clock.advance(100)
    assert log == ["stop c", "stop a"]
    assert not clock.getDelayedCalls()


def test_start_returning_a_failed_deferred_counts_as_failure() -> None:
    """A part whose startService returns a Deferred that fails later is restarted too."""
    from twisted.internet import defer

    clock = Clock()
    pending: list[defer.Deferred[None]] = []

    class Slow(service.Service):
        def startService(self) -> defer.Deferred[None]:  # type: ignore[override]
            super().startService()
            d: defer.Deferred[None] = defer.Deferred()
            pending.append(d)
            return d

    sup = Supervisor(clock, initial_delay=1.0)
    sup.supervise("slow", lambda crashed: Slow())
    sup.startService()
    pending[0].errback(OSError("port busy"))
    assert sup.child("slow") is None
    assert sup.status()[0].last_error == "port busy"
    clock.advance(1.0)
    assert len(pending) == 2 and sup.child("slow") is not None
