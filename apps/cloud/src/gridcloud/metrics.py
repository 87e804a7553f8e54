"""Prometheus metrics and the health check of a cloud process (``serve``, ``api``, ``pipeline``).

Why a registry per service and not prometheus-client's global one: tests run
several services in one process, and each must count only its own.  Why our
own small ``Resource`` instead of ``prometheus_client.twisted``: that one runs
the exposition in a WSGI thread pool, and rendering a few dozen series is
quick enough to do on the reactor; no thread is needed.

One HTTP listener per process (``metrics_listen`` in the config, off when
empty) serves:

- ``/metrics``: the text exposition format, what Prometheus scrapes;
- ``/healthz``: ``200 ok`` once the process serves and PostgreSQL is reachable,
  else ``503`` with the reason.  HAProxy's health checks ask this (see
  deploy/haproxy/haproxy.cfg), so a node that lost its database or is
  still starting gets no new edges, and the checks cost no TLS handshake and
  no refused-client log line on the edge port.

:class:`DatabaseGauges` adds what no single process counts but PostgreSQL knows:
commands by state and the pipeline's lag, sampled with one query every
``interval`` seconds (not at scrape time: the exposition is synchronous, and a
scrape must not wait for the database).  Every serve node samples the same
numbers; dashboards take ``max()`` over the nodes.

``gridcloud pipeline`` has its own registry (gridcloud.pipeline.metrics) and
uses :class:`MetricsListener` and :func:`pool_gauges` from here.

The names are documented in docs/operations.md ("Reading the metrics").

Tests: tests/cloud/test_cloud_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .firmware import UNIT_STATES

log = Logger(namespace="gridcloud.metrics")

#: ``health()`` answers (healthy, reason).
HealthCheck = Callable[[], tuple[bool, str]]

#: Commit latencies of one upload: a batch is a few ms on a healthy database, seconds when not.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: HTTP API latencies: pages are tens of ms, CSV exports and feeds longer.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def pool_gauges(registry: CollectorRegistry, prefix: str, pool: Any) -> None:
    """PostgreSQL pool gauges read at scrape time from a gridcloud.pool.DatabasePool.

    The pool takes a connection out of ``pool.connections`` while a statement
    runs on it, so busy = size - idle.
    """
    size = Gauge(f"{prefix}_db_pool_size", "PostgreSQL connections in the pool",
                 registry=registry)
    size.set_function(lambda: float(pool.min))
    busy = Gauge(f"{prefix}_db_pool_busy", "pool connections running a statement now",
                 registry=registry)
    busy.set_function(lambda: float(pool.min - len(pool.connections)))
    up = Gauge(f"{prefix}_db_up", "1 while PostgreSQL is reachable, 0 while the pool sees it down",
               registry=registry)
    up.set_function(lambda: 1.0 if pool.available else 0.0)


class ServeMetrics:
    """What ``gridcloud serve`` counts: connections, handshakes, ingest, back-pressure, pool."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections_open = Gauge(
            "gridcloud_connections_open", "TCP connections open on the edge port", registry=r)
        self.connections = Counter(
            "gridcloud_connections", "TCP connections accepted on the edge port", registry=r)
        self.handshakes = Counter(
            "gridcloud_tls_handshakes", "TLS handshakes completed, by kind (full or resumed)",
            ["kind"], registry=r)
        self.handshake_failures = Counter(
            "gridcloud_tls_handshake_failures", "connections lost with a TLS failure", registry=r)
        self.readings = Counter(
            "gridcloud_readings_ingested", "readings committed (a replayed duplicate included)",
            registry=r)
        self.uploads = Counter(
            "gridcloud_uploads_committed", "uploads committed, by kind (batch or event)",
            ["kind"], registry=r)
        self.upload_failures = Counter(
            "gridcloud_upload_failures", "uploads whose transaction failed", registry=r)
        self.commit_seconds = Histogram(
            "gridcloud_commit_seconds", "time from handing an upload to PostgreSQL to its COMMIT",
            buckets=COMMIT_BUCKETS, registry=r)
        self.backpressure_pauses = Counter(
            "gridcloud_backpressure_pauses",
            "times a connection stopped reading because its uploads waited for PostgreSQL",
            registry=r)
        for kind in ("full", "resumed"):
            self.handshakes.labels(kind=kind)
        for kind in ("batch", "event"):
            self.uploads.labels(kind=kind)

    def sessions(self, count: Callable[[], int]) -> None:
        """Expose the number of admitted edge sessions, read from ``count()`` at scrape time."""
        gauge = Gauge("gridcloud_sessions_live", "edges admitted and live on this node",
                      registry=self.registry)
        gauge.set_function(lambda: float(count()))

    def firmware(self, server: Any) -> None:
        """Rollout units by state (cluster-wide, refreshed by ``server``, a
        gridcloud.firmware.FirmwareServer) and the chunks this node served."""
        units = Gauge("gridcloud_rollout_units",
                      "units of rollouts by state, all rollouts of the cluster (every serve "
                      "node reports the same numbers)", ["state"], registry=self.registry)
        def count(state: str) -> Callable[[], float]:
            return lambda: float(server.unit_counts.get(state, 0))

        for state in UNIT_STATES:
            units.labels(state=state).set_function(count(state))
        chunks = Gauge("gridcloud_firmware_chunks_sent", "firmware chunks this node sent",
                       registry=self.registry)
        chunks.set_function(lambda: float(server.chunks_sent))
        sent = Gauge("gridcloud_firmware_bytes_sent",
                     "firmware bytes this node sent in chunks (before TLS)",
                     registry=self.registry)
        sent.set_function(lambda: float(server.bytes_sent))


#: One round trip for every database-wide gauge (the indexes are migration 0011's).
DATABASE_SQL = """
SELECT
  (SELECT coalesce(json_object_agg(state, n), '{}') FROM
     (SELECT state, count(*) AS n FROM commands
       WHERE state IN ('queued', 'sent', 'acknowledged') GROUP BY state) AS open),
  (SELECT coalesce(json_object_agg(state, n), '{}') FROM
     (SELECT state, count(*) AS n FROM commands
       WHERE updated_at > now() - interval '1 hour'
         AND state IN ('succeeded', 'failed', 'expired') GROUP BY state) AS done),
  lag.records, lag.edges,
  CASE WHEN lag.edges > 0 THEN extract(epoch FROM now() - lag.last_progress) ELSE 0 END,
  (SELECT count(*) FROM pipeline_dead_letters)
FROM (SELECT coalesce(sum(e.last_seq - p.done_seq), 0) AS records,
             count(*) FILTER (WHERE e.last_seq > p.done_seq) AS edges,
             -- never processed: updated_at is -infinity; count from the edge's first contact
             greatest(max(p.updated_at), min(e.first_seen_at)) AS last_progress
        FROM edges e JOIN pipeline_progress p ON p.edge_id = e.edge_id
       WHERE e.last_seq > p.done_seq) AS lag
"""

COMMAND_STATES = ("queued", "sent", "acknowledged", "succeeded", "failed", "expired")


class DatabaseGauges(service.Service):
    """Commands by state and the pipeline's lag, from PostgreSQL every ``interval`` seconds.

    ``query(sql)`` answers rows (``IngestStore.run``).  A failed sample keeps the
    last values and counts a failure (``gridcloud_db_sample_failures``): a
    database outage shows in ``gridcloud_db_up`` already.
    """

    def __init__(self, registry: CollectorRegistry, query: Callable[[str], Any], clock: Any,
                 interval: float = 30.0) -> None:
        self._query = query
        self._clock = clock
        self._interval = interval
        self._loop: Any = None
        r = registry
        self.commands = Gauge(
            "gridcloud_commands", "commands by state: the open ones (queued, sent, "
            "acknowledged) all, the finished ones of the last hour", ["state"], registry=r)
        self.lag_records = Gauge(
            "gridcloud_pipeline_lag_records",
            "journal records committed by ingest and not yet processed by the pipeline",
            registry=r)
        self.lag_edges = Gauge(
            "gridcloud_pipeline_lag_edges", "edges with records the pipeline has not processed",
            registry=r)
        self.stalled = Gauge(
            "gridcloud_pipeline_stalled_seconds",
            "while records wait: seconds since the pipeline last moved any of the waiting edges "
            "forward "
            "(0 when nothing waits)", registry=r)
        self.dead_letters = Gauge(
            "gridcloud_pipeline_dead_letters", "records the pipeline set aside", registry=r)
        self.failures = Counter(
            "gridcloud_db_sample_failures", "samples of the database gauges that failed",
            registry=r)
        for state in COMMAND_STATES:
            self.commands.labels(state=state)

    def startService(self) -> None:
        from twisted.internet import task

        super().startService()  # type: ignore[no-untyped-call]
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def sample(self) -> defer.Deferred[None]:
        """Take one sample now (the loop's call; tests call it too)."""
        d: defer.Deferred[Any] = defer.maybeDeferred(self._query, DATABASE_SQL)
        return d.addCallbacks(self._store, self._failed)

    def _store(self, rows: Any) -> None:
        open_states, done, records, edges, stalled, dead = rows[0]
        for state in COMMAND_STATES:
            count = (open_states or {}).get(state, (done or {}).get(state, 0))
            self.commands.labels(state=state).set(float(count))
        self.lag_records.set(float(records or 0))
        self.lag_edges.set(float(edges or 0))
        self.stalled.set(float(stalled or 0))
        self.dead_letters.set(float(dead or 0))

    def _failed(self, failure: Any) -> None:
        self.failures.inc()
        log.info("database gauges not sampled: {why}", why=failure.getErrorMessage())


class ApiMetrics:
    """What ``gridcloud api`` counts: requests by method, resource and status, latency, pool."""

    #: First path segment after ``/v1/`` that names a resource; anything else is "other",
    #: so a scan of random URLs cannot blow up the number of series.
    RESOURCES = frozenset({"edges", "meters", "readings", "events", "apikeys", "feed",
                           "openapi.json", "releases", "rollouts"})

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "gridcloud_api_requests", "HTTP requests answered, by method, resource and status",
            ["method", "resource", "status"], registry=self.registry)
        self.request_seconds = Histogram(
            "gridcloud_api_request_seconds", "time from request received to response finished",
            ["resource"], buckets=REQUEST_BUCKETS, registry=self.registry)

    @classmethod
    def resource_of(cls, path: bytes) -> str:
        parts = path.split(b"?", 1)[0].decode("ascii", "replace").strip("/").split("/")
        if len(parts) >= 2 and parts[0] == "v1" and parts[1] in cls.RESOURCES:
            return parts[1]
        return "other"

    def observe(self, method: bytes, path: bytes, status: int, seconds: float) -> None:
        resource = self.resource_of(path)
        self.requests.labels(method=method.decode("ascii", "replace"), resource=resource,
                             status=str(status)).inc()
        self.request_seconds.labels(resource=resource).observe(seconds)


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())  # type: ignore[no-untyped-call]
        return generate_latest(self._registry)


class _Health(Resource):
    isLeaf = True

    def __init__(self, health: HealthCheck) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._health = health

    def render_GET(self, request: Request) -> bytes:
        healthy, reason = self._health()
        request.setHeader(  # type: ignore[no-untyped-call]
            b"content-type", b"text/plain; charset=utf-8")
        if not healthy:
            request.setResponseCode(503)
        return (reason + "\n").encode()


def metrics_site(registry: CollectorRegistry, health: HealthCheck) -> Site:
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"metrics", _Metrics(registry))
    root.putChild(b"healthz", _Health(health))
    site = Site(root)  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]  # scrapes every few s: no log
    return site


class MetricsListener(service.Service):
    """Serves ``/metrics`` and ``/healthz`` on ``description`` (a Twisted server endpoint).

    Started first by its parent, so that a process still connecting to
    PostgreSQL already answers ``/healthz`` with 503 rather than refusing.
    """

    def __init__(self, reactor: Any, description: str, registry: CollectorRegistry,
                 health: HealthCheck) -> None:
        self._reactor = reactor
        self._description = description
        self._site = metrics_site(registry, health)
        self.port: Any = None

    async def listen(self) -> Any:
        endpoint = endpoints.serverFromString(  # type: ignore[no-untyped-call]
            self._reactor, self._description)
        self.port = await endpoint.listen(self._site)
        # {address}, not host:port: a Unix socket's address has neither
        log.info("metrics and health on {address} (/metrics, /healthz)",
                 address=self.port.getHost())
        return self.port

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            yield self.port.stopListening()
