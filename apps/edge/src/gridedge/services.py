"""The unit's composition root: the services of `gridedge run` and how they fit together.

Why here and not in the parts: the radio link, the journal and the uplink do
not know each other's construction; this module is the one place that reads
the configuration and wires journal -> radio -> uplink under a
:class:`~gridedge.supervisor.Supervisor`, with the health socket beside it.
The tree (docs/edge.md, "Supervision tree")::

    Unit (MultiService)
    ├── supervisor (one_for_one, restart with backoff)
    │   ├── journal   JournalService   (opens the SQLite journal)
    │   ├── radio     RadioService     (serial port -> records -> journal)
    │   └── uplink    UplinkService    (journal -> TLS -> cloud; counts traffic)
    └── health        HealthService    (Unix socket for `gridedge health`)

Tests: tests/edge/test_edge_cli.py, tests/system/test_faults.py.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from gridedge.config import Config
from gridedge.health import HealthService, Snapshot
from gridedge.journal import Journal
from gridedge.radio import RadioService
from gridedge.supervisor import Crashed, Supervisor
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.link import LinkSettings
from gridedge.uplink.service import UplinkService
from gridedge.uplink.tls import DeviceIdentity
from gridedge.uplink.traffic import Traffic


class JournalService(service.Service):
    """Opens the journal, writes the events it holds in memory once a minute, closes it."""

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


class Unit(service.MultiService):
    """The running unit, built complete from its configuration: the root of the tree, and
    the handles on its parts that the health report reads."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.clock: IReactorTime = reactor
        self.started_at = reactor.seconds()
        self.journal = Journal(config.journal.path, max_bytes=config.journal.max_bytes,
                               synchronous=config.journal.synchronous, clock=reactor.seconds)
        self.traffic = Traffic(config.journal.path, clock=reactor.seconds)
        self.supervisor = Supervisor(reactor)
        self.supervisor.supervise("journal", lambda crashed: JournalService(self.journal, reactor))
        port = config.radio.port
        if port is not None:
            self.supervisor.supervise("radio", lambda crashed: RadioService(
                port, config.radio.baudrate, self.journal, reactor, config.radio.link))
        self.supervisor.supervise("uplink", self._uplink)
        self.supervisor.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.health = HealthService(
            reactor, config.health.socket, self.snapshot, self.radio_frames,
            radio_window=config.health.radio_window, uplink_window=config.health.uplink_window,
        )
        self.health.setServiceParent(self)  # type: ignore[no-untyped-call]

    def _uplink(self, crashed: Crashed) -> UplinkService:
        """A new uplink, made at each (re)start of the supervised child."""
        up = self.config.uplink
        return UplinkService(
            self.clock, self.journal, self.traffic,
            host=up.host, port=up.port, server_name=up.server_name,
            identity_loader=lambda: DeviceIdentity.load(up.tls_dir),
            settings=LinkSettings.from_config(self.config.edge, up),
            backoff=ReconnectPolicy(up.backoff_initial, up.backoff_max, up.backoff_factor,
                                    up.backoff_revoked),
            connect_timeout=up.connect_timeout,
            expected_meters=self.reporting_meters,
            budget_bytes=int(up.budget_mb_per_month * 1e6),
        )

    def reporting_meters(self) -> int:
        """Meters expected to report each interval: those the radio link knows as joined
        (0 without a radio link; the upload schedule then relies on its deadline)."""
        radio = self.supervisor.child("radio")
        link = getattr(radio, "link", None)
        if link is None:
            return 0
        return sum(1 for state in link.registry.states() if state.joined)

    # -- what the health service reads -------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = self.clock.seconds()
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
            details["traffic_per_day"] = self.traffic.per_day()
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
            journal_disk_fault=self.journal.disk_fault,
            radio_configured=self.config.radio.port is not None,
            radio_last_frame_at=self.health.radio_last_frame_at,
            uplink_connected=up.connected if up is not None else False,
            uplink_last_connected_at=up.last_connected_at if up is not None else None,
            details=details,
        )

    def radio_frames(self) -> int | None:
        radio = self.supervisor.child("radio") if self.config.radio.port else None
        return int(radio.link.stats()["frames_ok"]) if radio is not None else None
