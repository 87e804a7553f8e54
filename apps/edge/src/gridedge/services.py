"""The unit's composition root: the services of `gridedge run` and how they fit together.

Why here and not in the parts: the radio link, the journal and the uplink do
not know each other's construction; this module is the one place that reads
the configuration and wires journal -> radio -> uplink under a
:class:`~gridedge.supervisor.Supervisor`, with the health socket beside it.
The tree (docs/edge.md, "Supervision tree")::

    Unit (MultiService)
    ├── supervisor (one_for_one, restart with backoff)
    │   ├── journal   JournalService   (opens the SQLite journal)
    │   ├── commands  CommandService   (opens the command store, runs commands)
    │   ├── credit    CreditService    (prepaid countdown on credit.db; gridedge.credit)
    │   ├── radio     RadioService     (serial port -> records -> journal)
    │   ├── uplink    UplinkService    (journal -> TLS -> cloud; counts traffic)
    │   └── web       WebService       (HTTPS page for technicians; only with [web] enabled)
    ├── firmware      FirmwareService  (the update agent: offers, downloads, installs)
    ├── health        HealthService    (Unix socket for `gridedge health`)
    └── metrics       MetricsService   (/metrics on loopback, when [health] metrics_listen is set)

The command executor (``Unit.commands``) outlives its service's restarts, like the
journal: the uplink hands it commands, and the local page's actions go through its
``submit_local`` (gridedge.web.CommandActions).  So does the update agent (``Unit.firmware``):
each uplink connection is handed to it, and the page's bundle upload installs through it.

Tests: tests/edge/test_edge_cli.py, tests/system/test_faults.py, tests/edge/test_edge_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from gridwire import HealthSummary
from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from gridedge.commands import CommandExecutor, CommandStore, UnitHooks
from gridedge.commands import settings as saved_settings
from gridedge.config import Config, ConfigError, load
from gridedge.credit import CreditSink, CreditStore, UnitCredit
from gridedge.firmware import Agent, BundleTools, DownloadStore, RaucSlots
from gridedge.firmware.service import FirmwareService
from gridedge.health import HealthService, Snapshot, evaluate
from gridedge.journal import Event, Journal, JournalError
from gridedge.linkquality import LinkQualityService
from gridedge.metrics import MetricsService
from gridedge.radio import RadioLink, RadioService, RecordSink
from gridedge.summary import HealthReporter, system_numbers
from gridedge.supervisor import Crashed, Supervisor
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.certstore import CertificateStore
from gridedge.uplink.link import LinkSettings
from gridedge.uplink.renewal import Renewal, RenewalSettings
from gridedge.uplink.service import UplinkService, UplinkStatus
from gridedge.uplink.traffic import Traffic
from gridedge.web import CommandActions, History, HistorySink, WebService
from gridedge.web.diagnostics import LogTail


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


class CommandService(service.Service):
    """Opens the command store and runs what it holds; closes it on stop."""

    def __init__(self, executor: CommandExecutor) -> None:
        self.executor = executor

    def startService(self) -> None:
        self.executor.start()  # CommandStoreError: the supervisor logs it and retries
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.executor.stop()


class CreditService(service.Service):
    """Opens credit.db and runs the prepaid countdown; a child of its own, so that a broken
    credit.db never stops the cloud's commands (the supervisor logs it and retries)."""

    def __init__(self, credit: UnitCredit) -> None:
        self.credit = credit

    def startService(self) -> None:
        self.credit.start()  # CreditStoreError: the supervisor logs it and retries
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.credit.stop()


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
        self.reactor = reactor
        #: reboot after the clean stop (a reboot command): read by `gridedge run`
        self.reboot_requested = False
        #: how to stop cleanly (`gridedge run` sets the same function its SIGTERM uses)
        self.stop: Callable[[], None] = reactor.stop
        self.commands = CommandExecutor(
            CommandStore(config.data_dir / "commands.db", clock=reactor.seconds),
            self.journal, reactor,
            UnitHooks(radio=self.radio_link, apply_settings=self.apply_settings,
                      reboot=self.reboot, upload_now=self.upload_now,
                      set_allowance=self._set_allowance),
        )
        # Prepaid credit: allowances from the cloud counted down from the radio's records,
        # relay decisions as local commands (gridedge.credit), with or without the cloud.
        self.credit = UnitCredit(CreditStore(config.data_dir / "credit.db"), self.journal,
                                 reactor, self.commands.submit_local)
        self.supervisor.supervise("commands", lambda crashed: CommandService(self.commands))
        self.supervisor.supervise("credit", lambda crashed: CreditService(self.credit))
        self.firmware = Agent(config.firmware, DownloadStore(config.data_dir / "firmware"),
                              BundleTools(config.firmware.keyring), RaucSlots(self.reboot),
                              reactor, config.edge.firmware_version)
        # The page keeps the last day of each meter in memory: the radio link's records pass
        # through its HistorySink after the journal stored them.
        self.history: History | None = None
        sink: RecordSink = self.journal
        if config.web.enabled:
            self.history = History(reactor.seconds)
            sink = HistorySink(self.journal, self.history)
        sink = CreditSink(sink, self.credit)
        port = config.radio.port
        if port is not None:
            watched = self.history

            def radio(crashed: Crashed) -> RadioService:
                svc = RadioService(port, config.radio.baudrate, sink, reactor, config.radio.link)
                if watched is not None:  # joins, leaves, relay confirmations: live on the page
                    svc.link.on_meter_change = watched.touch
                return svc

            self.supervisor.supervise("radio", radio)
            self.supervisor.supervise("link-quality", lambda crashed: LinkQualityService(
                self.journal, self.radio_link, reactor, config.radio.link.link_report_gap))
        self.supervisor.supervise("uplink", self._uplink)
        if self.history is not None:
            history = self.history
            actions = CommandActions(self.commands, history)
            logs = LogTail()
            self.supervisor.supervise("web", lambda crashed: WebService(
                self, history, actions, reactor, logs))
        self.supervisor.setServiceParent(self)  # type: ignore[no-untyped-call]
        FirmwareService(self.firmware).setServiceParent(self)  # type: ignore[no-untyped-call]
        self.health = HealthService(
            reactor, config.health.socket, self.snapshot, self.radio_frames,
            radio_window=config.health.radio_window, uplink_window=config.health.uplink_window,
        )
        self.health.setServiceParent(self)  # type: ignore[no-untyped-call]
        if config.health.summary_interval > 0:
            self.summaries: HealthReporter | None = HealthReporter(
                self.journal, self.health_summary, reactor, config.health.summary_interval)
            self.summaries.setServiceParent(self)  # type: ignore[no-untyped-call]
        else:
            self.summaries = None
        if config.health.metrics_listen:
            MetricsService(reactor, config.health.metrics_listen, self.health.report
                           ).setServiceParent(self)  # type: ignore[no-untyped-call]

    def _uplink(self, crashed: Crashed) -> UplinkService:
        """A new uplink, made at each (re)start of the supervised child."""
        up = self.config.uplink
        store = CertificateStore(up.tls_dir)
        return UplinkService(
            self.clock, self.journal, self.traffic,
            host=up.host, port=up.port, server_name=up.server_name,
            identity_loader=store.current,
            settings=LinkSettings.from_config(self.config.edge, up),
            backoff=ReconnectPolicy(up.backoff_initial, up.backoff_max, up.backoff_factor,
                                    up.backoff_revoked),
            connect_timeout=up.connect_timeout,
            commands=self.commands,
            expected_meters=self.reporting_meters,
            budget_bytes=int(up.budget_mb_per_month * 1e6),
            firmware=self.firmware,
            renewal=Renewal(store, RenewalSettings(
                renew_before=self.config.certificate.renew_before_days * 86400.0,
                refused_wait=self.config.certificate.refused_wait)),
            tls_version=up.tls_version,
        )

    def reporting_meters(self) -> int:
        """Meters expected to report each interval: those the radio link knows as joined
        (0 without a radio link; the upload schedule then relies on its deadline)."""
        link = self.radio_link()
        if link is None:
            return 0
        return sum(1 for state in link.registry.states() if state.joined)

    # -- what the command executor and the web page ask of the unit ---------------------------

    def radio_link(self) -> RadioLink | None:
        """The running radio link, or None while it is down (or the unit has no radio)."""
        radio = self.supervisor.child("radio") if self.config.radio.port else None
        return radio.link if radio is not None and radio.running else None

    def apply_settings(self, changes: Mapping[str, float]) -> str:
        """Save ``changes`` on the data partition and use them from the next connection on;
        ValueError (nothing saved) when the configuration would not start with them."""
        path = self.config.data_dir / saved_settings.FILE_NAME
        before = path.read_bytes() if path.exists() else None
        saved_settings.save(path, changes)
        try:
            config = load(self.config.source)
        except ConfigError as exc:
            if before is None:
                path.unlink()
            else:
                saved_settings.restore(path, before)
            raise ValueError(str(exc)) from None
        self.config = config
        uplink = self.supervisor.child("uplink")
        if uplink is not None:
            uplink.settings = LinkSettings.from_config(config.edge, config.uplink)
        done = ", ".join(f"{k}={v:g}" for k, v in sorted(changes.items()))
        return f"saved {done}; in effect from the next connection"

    def reboot(self) -> None:
        """Stop the way SIGTERM does (journal closed cleanly), then reboot (gridedge.cli)."""
        self.reboot_requested = True
        self.stop()

    def _set_allowance(self, meter_id: int, payload: bytes) -> str:
        """The set_allowance command: the credit countdown takes it (ValueError: refused)."""
        return self.credit.set_allowance(meter_id, payload)

    def upload_now(self) -> bool:
        uplink = self.supervisor.child("uplink")
        return bool(uplink is not None and uplink.upload_now())

    # -- what the web page reads (gridedge.web.UnitView) ---------------------------------------

    def uplink_status(self) -> UplinkStatus | None:
        uplink = self.supervisor.child("uplink")
        return uplink.status() if uplink is not None else None

    def problems(self) -> list[str]:
        """What `gridedge health` would complain about now."""
        return evaluate(self.snapshot(), self.config.health.radio_window,
                        self.config.health.uplink_window)

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
        if self.commands.store.is_open:
            details["commands"] = {"stored": self.commands.store.counts(),
                                   "executed": dict(self.commands.executed)}
        if self.credit.store.is_open:
            details["credit"] = dict(self.credit.summary())
        if stats is not None:
            details["journal"] = asdict(stats)
            details["journal_oldest_pending_at"] = self._oldest_pending_at(stats.first_pending_seq)
            details["traffic_per_day"] = self.traffic.per_day()
        if up is not None:
            details["uplink"] = asdict(up)
        details["firmware"] = self.firmware.view()
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

    def health_summary(self) -> HealthSummary:
        """What the unit reports to the cloud every [health] summary_interval (gridedge.summary)."""
        now = self.clock.seconds()
        stats = self.journal.stats() if self.journal.is_open else None
        oldest = self._oldest_pending_at(stats.first_pending_seq) if stats is not None else None
        frame = self.health.radio_last_frame_at
        return HealthSummary(
            journal_backlog=stats.pending if stats is not None else None,
            journal_oldest_age=max(0, int(now - oldest)) if oldest is not None else None,
            last_radio_frame=int(frame) if frame is not None else None,
            gridedge_uptime=max(0, int(now - self.started_at)),
            restarts=sum(s.restarts for s in self.supervisor.status()),
            **system_numbers(self.config.data_dir),
        )

    def _oldest_pending_at(self, seq: int | None) -> int | None:
        """When the oldest entry not yet acknowledged happened (its interval end or event
        time): the age of the backlog, for the unit's metrics. One primary-key read."""
        if seq is None:
            return None
        try:
            entries = self.journal.read(seq, 1)
        except JournalError:  # a journal fault is reported by its own checks, not here
            return None
        if not entries:
            return None
        entry = entries[0][1]
        return int(entry.time if isinstance(entry, Event) else entry.interval_end)

    def radio_frames(self) -> int | None:
        radio = self.supervisor.child("radio") if self.config.radio.port else None
        return int(radio.link.stats()["frames_ok"]) if radio is not None else None
