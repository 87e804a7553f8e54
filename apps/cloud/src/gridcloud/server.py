"""``gridcloud serve``: edges connect over mutual TLS, their uploads land in PostgreSQL.

Theory of operation
-------------------
:class:`CloudService` (a ``MultiService``, the root of the server's supervision
tree) opens the txpostgres pool, then starts its parts in order, each once the
previous one is ready:

1. :class:`RevocationListener` LISTENs for ``NOTIFY gridcloud_revoked``: a
   revocation committed on any node closes the edge's sessions here (live or
   being admitted); when LISTEN comes back after an outage it re-checks them all.
2. :class:`PartitionMaintenance` makes sure the readings partitions exist
   (before any edge is accepted), then checks again every
   ``partition_check_interval``.
3. :class:`~gridcloud.commands.CommandDispatcher` LISTENs for ``NOTIFY
   gridcloud_commands`` and delivers commands to the live sessions of this node;
   :class:`~gridcloud.firmware.FirmwareServer` LISTENs for ``NOTIFY
   gridcloud_rollouts`` and offers firmware to the units of rollouts, serves
   their chunks and records their statuses.
4. :class:`EdgeListener` listens on a plain TCP endpoint wrapped in TLS by
   :class:`gridcloud.tls.ServerTLS`.

Edges' certificate renewal requests are answered by
:class:`gridcloud.renewal.CertificateIssuer` (signing with the online issuing CA
when ``issuing_ca_cert``/``issuing_ca_key`` are set, refusing otherwise).

Under TLS every connection's bytes are counted (:mod:`gridcloud.traffic`)
and added to ``edge_traffic`` per edge and UTC day every
``traffic_flush_interval`` and soon after each connection closes.

Before all of them, when ``metrics_listen`` is set, the
:class:`gridcloud.metrics.MetricsListener` opens ``/metrics`` and ``/healthz``
(503 until the edge port listens, and while PostgreSQL is unreachable: what
HAProxy's health checks ask).

Stopping runs the other way: stop listening and drop every connection, stop
the partition check, write the last traffic counts, then close the pool.

The registry of live sessions is a :class:`gridcloud.presence.PresenceRegistry`:
it also records in ``edges.session_token`` which edges this node holds, for the
HTTP API's "online" (it clears its marks when the service stops).

Each accepted connection is a :class:`gridcloud.protocol.EdgeProtocol` (the
Twisted adapter) driving a :class:`gridcloud.connection.EdgeConnection` (the
rules: admission, ordered ingest, back-pressure, timeouts, session
replacement; see that module).  The service hands every connection the same
parts: the clock, the store, the registry of live sessions, the log, and the
table of message handlers (:mod:`gridcloud.handlers`).

Tests: tests/cloud/test_cloud_server.py, tests/system/test_certificates.py,
tests/cloud/test_cloud_presence.py, tests/cloud/test_api_traffic.py,
tests/cloud/test_cloud_metrics.py, tests/system/test_scale_out.py,
tests/system/test_certificate_renewal.py, tests/cloud/test_cloud_firmware_serving.py.
"""

from __future__ import annotations

from typing import Any

from gridwire import CertificateRequest, ChunkRequest, CommandResult, FirmwareStatus
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from . import migrations, pki, revocation
from .commands import CommandDispatcher
from .config import ServerConfig
from .connection import EdgeConnection, SessionObserver, StoreUnavailable, Transport
from .firmware import FirmwareServer
from .handlers import default_handlers
from .ingest import IngestStore
from .metrics import DatabaseGauges, MetricsListener, ServeMetrics, pool_gauges
from .presence import PresenceRegistry
from .protocol import DeferredStore, EdgeFactory
from .renewal import CertificateIssuer
from .sessions import SessionRegistry
from .tls import ServerTLS
from .traffic import CountingFactory, EdgeTraffic

log = Logger(namespace="gridcloud.server")


class _Part(service.Service):
    """A part of CloudService whose start takes a while: ``ready`` fires when it is done."""

    ready: defer.Deferred[Any]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready = defer.ensureDeferred(self.start())

    async def start(self) -> Any:
        """Start; the result becomes ``ready``'s."""


class RevocationListener(_Part):
    """Closes the sessions of an edge or certificate revoked on any cloud node (LISTEN/NOTIFY).

    A NOTIFY sent while the LISTEN connection is down (a PostgreSQL restart)
    never arrives, so each time LISTEN is re-established every identified
    connection is checked against the revocation tables (:meth:`recheck`).
    The LISTEN connection may be back before the pool is: a re-check that
    cannot run yet is tried again after the pool's retry hint (or, for any
    other failure, after a delay doubling up to 5 minutes), never dropped.
    """

    #: first and largest delay before re-checking again after a failure other than an outage
    RETRY_FIRST = 2.0
    RETRY_MAX = 300.0

    def __init__(
        self, store: IngestStore, sessions: SessionRegistry[EdgeConnection], clock: Any
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._clock = clock
        self._retry: Any = None  # the pending re-check after a failed one
        self._delay = self.RETRY_FIRST
        #: revocation notices handled so far
        self.handled = 0
        #: re-checks done after LISTEN was re-established
        self.rechecks = 0

    def stopService(self) -> None:
        self._cancel_retry()
        super().stopService()  # type: ignore[no-untyped-call]

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    async def start(self) -> None:
        await self._store.listen(revocation.CHANNEL, self.notice, self.recheck)

    def notice(self, payload: str) -> None:
        """Close what ``payload`` revokes (see gridcloud.revocation.notice)."""
        try:
            edge_id, serial = revocation.parse_notice(payload)
        except ValueError as exc:
            log.warn("ignoring a revocation notice: {why}", why=str(exc))
        else:
            for session in self._sessions.revocable(edge_id, serial):
                session.revoked()
        self.handled += 1

    def recheck(self) -> defer.Deferred[None]:
        """Close every connection whose edge or certificate is revoked now (notices were lost)."""
        self._cancel_retry()
        identities: dict[tuple[str, int], list[EdgeConnection]] = {}
        for connection in self._sessions.connections():
            if connection.edge_id is not None:
                identities.setdefault((connection.edge_id, connection.serial), []).append(
                    connection
                )
        log.info(
            "LISTEN {channel} re-established: checking {count} connections for revocations",
            channel=revocation.CHANNEL,
            count=len(identities),
        )

        def close(revoked: set[tuple[str, int]]) -> None:
            for identity in revoked:
                for connection in identities.get(identity, []):
                    connection.revoked()
            self.rechecks += 1
            self._delay = self.RETRY_FIRST

        def failed(failure: Failure) -> None:
            # New connections are checked at admission meanwhile; the live ones wait for this.
            if isinstance(failure.value, StoreUnavailable):
                wait = float(failure.value.retry_after)
                log.info(
                    "re-checking connections for revocations in {wait:.0f} s: {why}",
                    wait=wait, why=failure.getErrorMessage(),
                )
            else:
                wait, self._delay = self._delay, min(self._delay * 2, self.RETRY_MAX)
                log.warn(
                    "re-checking connections for revocations failed: {why}; again in {wait:.0f} s",
                    why=failure.getErrorMessage(), wait=wait,
                )
            if self.running:
                self._retry = self._clock.callLater(wait, self.recheck)

        return self._store.revoked_among(list(identities)).addCallbacks(close, failed)


class PartitionMaintenance(_Part):
    """Keeps ``days_ahead`` daily readings partitions ready: at start, then every ``interval``."""

    def __init__(self, store: IngestStore, days_ahead: int, interval: float, clock: Any) -> None:
        self._store = store
        self._days_ahead = days_ahead
        self._interval = interval
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    async def start(self) -> None:
        await self.check()
        if self.running:  # not stopped meanwhile
            self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()

    def check(self) -> defer.Deferred[None]:
        """Create the missing partitions; a failure is logged and retried at the next check."""

        def created(count: int) -> None:
            if count:
                log.info("created {count} readings partitions", count=count)

        def failed(failure: Failure) -> None:
            log.failure("creating readings partitions failed (will retry)", failure)

        return self._store.ensure_partitions(self._days_ahead).addCallbacks(created, failed)


class EdgeListener(_Part):
    """Accepts edges on a Twisted endpoint, each connection wrapped in mutual TLS."""

    def __init__(
        self,
        reactor: Any,
        description: str,
        tls: ServerTLS,
        factory: EdgeFactory,
        traffic: EdgeTraffic,
    ) -> None:
        self._reactor = reactor
        self._description = description
        self._tls = tls
        self.factory = factory
        self._traffic = traffic
        #: the IListeningPort, once listening
        self.port: Any = None

    async def start(self) -> Any:
        endpoint = endpoints.serverFromString(  # type: ignore[no-untyped-call]
            self._reactor, self._description
        )
        self.port = await endpoint.listen(
            CountingFactory(TLSMemoryBIOFactory(self._tls, False, self.factory), self._traffic)
        )
        log.info("gridcloud listening on {address} (mutual TLS)", address=self.port.getHost())
        return self.port

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            yield self.port.stopListening()
        self.factory.abort_all()


class _Observers:
    """Several parts told of each live session (commands, firmware), in order."""

    def __init__(self, *observers: SessionObserver) -> None:
        self._observers = observers

    def live(self, connection: EdgeConnection) -> None:
        for observer in self._observers:
            observer.live(connection)

    def gone(self, connection: EdgeConnection) -> None:
        for observer in self._observers:
            observer.gone(connection)


class CloudService(service.MultiService):
    """The cloud server's root service: the pool, and its parts as child services.

    Start it with ``startService()``; ``ready`` fires with the listening port
    (or fails if PostgreSQL or the port cannot be opened).  ``stopService()``
    stops listening, closes every connection and the pool.
    """

    def __init__(
        self, reactor: Any, config: ServerConfig, *, tls: ServerTLS | None = None, clock: Any = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: IReactorTime for timeouts and Welcome.server_time (tests inject a task.Clock)
        self.clock = clock if clock is not None else reactor
        self.config = config.validate()
        assert config.cert and config.key and config.ca and config.dsn
        self.tls = (
            tls
            if tls is not None
            else ServerTLS.from_files(
                config.cert,
                config.key,
                config.ca,
                groups=config.tls_groups,
                resumption=config.tls_resumption,
                session_lifetime=config.tls_session_lifetime,
                intermediates=config.issuing_ca_cert,
            )
        )
        self.store = IngestStore(reactor, config.dsn, config.pool_size)
        #: the live session of each edge, also recorded in PostgreSQL (gridcloud.presence)
        self.sessions: PresenceRegistry[EdgeConnection] = PresenceRegistry(reactor, config.dsn)
        self.sessions.setServiceParent(self)  # type: ignore[no-untyped-call]
        #: what to do with the messages beyond the core, by type (see gridcloud.handlers)
        self.handlers = default_handlers()
        #: delivers commands to this node's live sessions (gridcloud.commands)
        self.commands = CommandDispatcher(
            self.store, self.sessions, self.clock,
            window=config.command_window, expiry_interval=config.command_expiry_interval,
        )
        self.handlers[CommandResult] = self.commands.result
        #: answers edges' certificate renewal requests (gridcloud.renewal)
        self.issuer = CertificateIssuer(
            pki.load_issued(config.issuing_ca_cert, config.issuing_ca_key)
            if config.issuing_ca_cert is not None and config.issuing_ca_key is not None
            else None,
            self.store.run, days=config.certificate_days, now=self.clock.seconds,
        )
        self.handlers[CertificateRequest] = self.issuer
        #: offers firmware to units of rollouts, serves chunks, records statuses
        self.firmware = FirmwareServer(self.store, self.sessions, self.clock, config.releases)
        self.handlers[ChunkRequest] = self.firmware.chunk
        self.handlers[FirmwareStatus] = self.firmware.status
        self._observers = _Observers(self.commands, self.firmware)
        self.ready: defer.Deferred[Any] = defer.Deferred()
        #: Prometheus metrics of this process (served when ``config.metrics_listen`` is set)
        self.metrics = ServeMetrics()
        self.metrics.sessions(lambda: len(self.sessions))
        self.metrics.firmware(self.firmware)
        pool_gauges(self.metrics.registry, "gridcloud", self.store.pool)
        self.metrics_listener: MetricsListener | None = None
        if config.metrics_listen:
            self.metrics_listener = MetricsListener(
                reactor, config.metrics_listen, self.metrics.registry, self.health)
            self.metrics_listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        #: commands by state and the pipeline's lag, sampled from PostgreSQL (with /metrics)
        self.database_gauges: DatabaseGauges | None = None
        if config.metrics_listen:
            self.database_gauges = DatabaseGauges(
                self.metrics.registry, self.store.run, self.clock, config.db_metrics_interval)
        self._database = DeferredStore(self.store, self.metrics)
        self.revocations = RevocationListener(self.store, self.sessions, self.clock)
        self.partitions = PartitionMaintenance(
            self.store, config.partition_days_ahead, config.partition_check_interval, self.clock
        )
        #: bytes per edge and UTC day (gridcloud.traffic), written to edge_traffic
        self.traffic = EdgeTraffic(self.store.add_traffic, self.clock,
                                   config.traffic_flush_interval)
        self.listener = EdgeListener(
            reactor, config.listen, self.tls,
            EdgeFactory(self._connection, self.tls, self.metrics), self.traffic,
        )
        for part in (self.revocations, self.partitions, self.commands, self.firmware,
                     self.listener):
            part.setServiceParent(self)  # type: ignore[no-untyped-call]

    @property
    def port(self) -> Any:
        """The IListeningPort, once listening (None before)."""
        return self.listener.port

    def startService(self) -> None:
        # Not MultiService's start-them-all: each part waits for the one before it
        # (no edge is accepted before its revocations are heard and partitions exist).
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self.ready.errback)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/healthz``: listening for edges and PostgreSQL reachable."""
        if not self.running:
            return False, "stopping"
        if self.port is None:
            return False, "starting"
        if not self.store.pool.available:
            return False, "PostgreSQL unreachable"
        return True, "ok"

    async def _start(self) -> Any:
        if self.metrics_listener is not None:
            await self.metrics_listener.listen()
        await self.store.start()
        self.traffic.start()
        for part in (self.revocations, self.partitions, self.commands, self.firmware,
                     self.listener):
            part.startService()
            await part.ready
        if self.database_gauges is not None and self.running:
            self.database_gauges.setServiceParent(self)  # type: ignore[no-untyped-call]
        return self.port

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()  # type: ignore[no-untyped-call]
        yield self.traffic.stop()
        self.store.close()

    def _connection(self, transport: Transport, peer: str) -> EdgeConnection:
        return EdgeConnection(
            peer=peer,
            config=self.config,
            clock=self.clock,
            store=self._database,
            transport=transport,
            sessions=self.sessions,
            log=log,
            handlers=self.handlers,
            observer=self._observers,
        )


def check_schema(dsn: str, apply: bool) -> list[migrations.Migration]:
    """Before serving: apply pending migrations if asked, else refuse to serve a stale schema."""
    if apply:
        return migrations.migrate(dsn)
    missing = migrations.pending(dsn)
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise migrations.MigrationError(
            f"the database lacks migrations {names}: run 'gridcloud migrate' first "
            "(or serve with --migrate)"
        )
    return []
