"""A one_for_one supervisor for Twisted services: a failed child restarts alone, with backoff.

Why: the radio link, the journal and the uplink fail for unrelated reasons (a
USB-serial adapter unplugged, a full disk, a certificate not yet provisioned).
One failing part must not take the others down, and must not spin: like an OTP
``one_for_one`` supervisor, :class:`Supervisor` restarts only the child that
failed, after a delay that grows with consecutive failures (and resets once
the child has run for ``stable_after`` seconds).  The supervisor never gives
up, because giving up on a unit in the field means a process exit, a restart
by init and exactly the crash loop we want to avoid; a child that keeps failing
is reported unhealthy instead (see gridedge.health).

A child is built by a factory ``factory(crashed) -> IService`` each time it
(re)starts.  It fails when its ``startService`` raises (or returns a Deferred
that fails) or, later, when it calls ``crashed(reason)``.

Nothing here knows the unit: it supervises any services.  The unit's tree
(which children, in which order) is gridedge.services.

Tests: tests/edge/test_services.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

Crashed = Callable[[Failure | BaseException | str], None]
Factory = Callable[[Crashed], service.Service]


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """What health checks see of one supervised child."""

    name: str
    running: bool
    restarts: int
    last_error: str | None
    obj: Any


class _Child:
    def __init__(self, name: str, factory: Factory) -> None:
        self.name = name
        self.factory = factory
        self.service: service.Service | None = None
        self.generation = 0
        self.running = False
        self.failures = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.started_at = 0.0
        self.pending: IDelayedCall | None = None


class Supervisor(service.Service):
    """Starts children in order, stops them in reverse, restarts a failed one with backoff."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        stable_after: float = 60.0,
    ) -> None:
        self.clock = clock
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self._children: list[_Child] = []

    def supervise(self, name: str, factory: Factory) -> None:
        """Add a child; started now if the supervisor is already running."""
        child = _Child(name, factory)
        self._children.append(child)
        if self.running:
            self._start(child)

    def status(self) -> list[ChildStatus]:
        return [
            ChildStatus(c.name, c.running, c.restarts, c.last_error, c.service)
            for c in self._children
        ]

    def child(self, name: str) -> Any:
        """The current service object of child ``name`` (None while it is down or absent)."""
        for c in self._children:
            if c.name == name:
                return c.service if c.running else None
        return None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for child in self._children:
            self._start(child)

    def _start(self, child: _Child) -> None:
        child.pending = None
        child.generation += 1
        generation = child.generation

        def crashed(reason: Failure | BaseException | str) -> None:
            if child.generation == generation and child.running:
                self._failed(child, reason)

        try:
            svc = child.factory(crashed)
            child.service = svc
            child.started_at = self.clock.seconds()
            child.running = True
            result = svc.startService()  # type: ignore[no-untyped-call]
        except Exception as exc:
            self._failed(child, Failure(exc))  # type: ignore[no-untyped-call]
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(crashed)

    def _failed(self, child: _Child, reason: Failure | BaseException | str) -> None:
        text = (
            reason.getErrorMessage() if isinstance(reason, Failure)
            else str(reason) or type(reason).__name__
        )
        if self.clock.seconds() - child.started_at >= self.stable_after:
            child.failures = 0
        child.failures += 1
        delay = min(self.max_delay, self.initial_delay * 2 ** (child.failures - 1))
        child.last_error = text
        self.log.error(
            "{name} failed: {error}; restarting in {delay:.1f} s (failure {n} in a row)",
            name=child.name, error=text, delay=delay, n=child.failures,
        )
        old, child.service, child.running = child.service, None, False
        child.generation += 1
        if old is not None and old.running:
            self._stop_quietly(child.name, old)
        if self.running:
            child.pending = self.clock.callLater(delay, self._restart, child)

    def _restart(self, child: _Child) -> None:
        child.restarts += 1
        self.log.info("restarting {name}", name=child.name)
        self._start(child)

    def _stop_quietly(self, name: str, svc: service.Service) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.maybeDeferred(svc.stopService)

        def report(f: Failure) -> None:
            self.log.warn("{name} did not stop cleanly: {error}", name=name,
                          error=f.getErrorMessage())

        d.addErrback(report)
        return d

    def stopService(self) -> defer.Deferred[None]:
        """Stop the children in reverse order, each after the previous one has stopped."""
        super().stopService()  # type: ignore[no-untyped-call]
        order: list[tuple[str, service.Service]] = []
        for child in reversed(self._children):
            pending = child.pending
            if pending is not None and pending.active():
                pending.cancel()
            child.pending = None
            svc, child.service = child.service, None
            child.running = False
            child.generation += 1
            if svc is not None and svc.running:
                order.append((child.name, svc))
        return defer.ensureDeferred(self._stop_in_order(order))

    async def _stop_in_order(self, order: list[tuple[str, service.Service]]) -> None:
        for name, svc in order:
            await self._stop_quietly(name, svc)
