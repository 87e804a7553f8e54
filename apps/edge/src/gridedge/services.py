"""The supervision tree: parts of the unit restart on their own, one at a time.

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

The tree of `gridedge run` is built by :func:`build_unit` (its docstring has
the picture).

Tests: tests/edge/test_services.py, tests/edge/test_cli.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridedge.config import Config
from gridedge.health import HealthService, Snapshot
from gridedge.journal import Journal

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


class JournalService(service.Service):
    """Opens the journal, writes its in-memory counters once a minute, closes it at stop."""

    def __init__(self, journal: Journal, clock: IReactorTime, flush_every: float = 60.0) -> None:
        self.journal = journal
        self.clock = clock
        self.flush_every = flush_every
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        self.journal.open()  # JournalError: the supervisor logs it and retries
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self.journal.flush)
        self._loop.clock = self.clock
        self._loop.start(self.flush_every, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.journal.close()


@dataclass
class Unit:
    """The running unit: the root of the tree and handles on its parts (for health)."""

    config: Config
    root: service.MultiService
    supervisor: Supervisor
    journal: Journal
    health: HealthService
    started_at: float

    def snapshot(self) -> Snapshot:
        now = self.supervisor.clock.seconds()
        parts = {
            s.name: {"running": s.running, "restarts": s.restarts, "last_error": s.last_error}
            for s in self.supervisor.status()
        }
        uplink = self.supervisor.child("uplink")
        up = uplink.status() if uplink is not None else None
        stats = self.journal.stats() if self.journal.is_open else None
        details: dict[str, Any] = {
            "firmware_version": self.config.edge.firmware_version,
            "boot_slot": self.config.edge.boot_slot,
        }
        if stats is not None:
            details["journal"] = asdict(stats)
            details["traffic_per_day"] = self.journal.traffic()
        if up is not None:
            details["uplink"] = asdict(up)
        radio = self.supervisor.child("radio")
        if radio is not None:
            details["radio"] = radio.link.stats()
        return Snapshot(
            now=now,
            started_at=self.started_at,
            parts=parts,
            journal_open=self.journal.is_open,
            journal_disk_full=stats.disk_full if stats is not None else False,
            radio_configured=self.config.radio.port is not None,
            radio_last_frame_at=self.health.radio_last_frame_at,
            uplink_connected=up.connected if up is not None else False,
            uplink_last_connected_at=up.last_connected_at if up is not None else None,
            details=details,
        )

    def radio_frames(self) -> int | None:
        radio = self.supervisor.child("radio") if self.config.radio.port else None
        return int(radio.link.stats()["frames_ok"]) if radio is not None else None


def build_unit(config: Config, reactor: Any) -> Unit:
    """The supervision tree of `gridedge run`::

        root (MultiService)
        ├── supervisor (one_for_one, restart with backoff)
        │   ├── journal   JournalService   (opens the SQLite journal)
        │   ├── radio     RadioService     (serial port -> records -> journal)
        │   └── uplink    UplinkService    (journal -> TLS -> cloud)
        └── health        HealthService    (Unix socket for `gridedge health`)
    """
    from gridedge.radio import RadioService
    from gridedge.uplink.link import LinkSettings
    from gridedge.uplink.service import UplinkService, backoff_policy
    from gridedge.uplink.tls import DeviceIdentity

    journal = Journal(config.journal.path, max_bytes=config.journal.max_bytes,
                      synchronous=config.journal.synchronous, clock=reactor.seconds)
    supervisor = Supervisor(reactor)
    supervisor.supervise("journal", lambda crashed: JournalService(journal, reactor))
    if config.radio.port is not None:
        port = config.radio.port
        supervisor.supervise(
            "radio", lambda crashed: RadioService(
                port, config.radio.baudrate, journal, reactor, config.radio.link))
    up = config.uplink
    settings = LinkSettings(
        firmware_version=config.edge.firmware_version,
        boot_slot=config.edge.boot_slot,
        heartbeat=up.heartbeat,
        dead_after=up.dead_after,
        welcome_timeout=up.connect_timeout,
        max_in_flight=up.max_in_flight,
        batch_records=up.batch_records,
        batch_linger=up.batch_linger,
    )
    supervisor.supervise("uplink", lambda crashed: UplinkService(
        reactor, journal, host=up.host, port=up.port, server_name=up.server_name,
        identity_loader=lambda: DeviceIdentity.load(up.tls_dir), settings=settings,
        backoff=backoff_policy(up.backoff_initial, up.backoff_max, up.backoff_factor),
        connect_timeout=up.connect_timeout,
    ))
    root = service.MultiService()  # type: ignore[no-untyped-call]
    supervisor.setServiceParent(root)  # type: ignore[no-untyped-call]
    unit = Unit(config, root, supervisor, journal, None, reactor.seconds())  # type: ignore[arg-type]
    unit.health = HealthService(
        reactor, config.health.socket, unit.snapshot, unit.radio_frames,
        radio_window=config.health.radio_window, uplink_window=config.health.uplink_window,
    )
    unit.health.setServiceParent(root)  # type: ignore[no-untyped-call]
    return unit
