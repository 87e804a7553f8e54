"""The pipeline's runtime: claim, process, acknowledge; retry, set aside, drain.

The Broadway shape, over PostgreSQL:

- *Producer*: ``pipeline_claim()`` takes edges with unprocessed journal records
  (``edges.last_seq > pipeline_progress.done_seq``) ``FOR UPDATE SKIP LOCKED``,
  so any number of ``gridcloud pipeline`` processes share the work with no
  coordinator and never overlap.  It runs when ingest's ``NOTIFY
  gridcloud_feed`` (migration 0005, sent in the ingest transaction) says there
  is something new, when the last claim found a full batch, and every
  ``poll_interval`` seconds as the fallback (a NOTIFY is lost while the LISTEN
  connection is down).
- *Processors*: ``concurrency`` loops, each on its own pooled connection, each
  running one transaction at a time.
- *Batchers*: a claim takes up to ``batch_edges`` edges and ``batch_size``
  records of each; ``pipeline_process()`` handles the whole batch with
  set-based statements (all three stages) and moves ``done_seq`` in the same
  transaction, which is the acknowledgement: effects and acknowledgement
  commit together or not at all.
- *Failures*: deadlocks, serialisation failures and a lost database are retried
  (the latter with backoff) and never count against the records.  Any other
  error is counted against the claimed edges by ``pipeline_failed()``: they are
  retried after a backoff, alone and one record at a time up to the end of the
  failed batch, and a record that fails ``max_attempts`` times is set aside in
  ``pipeline_dead_letters`` with the error, so one bad record never blocks an
  edge and nothing is retried for ever.
- *Drain*: ``stopService`` (SIGTERM) lets each loop finish its transaction,
  starts no new one, and then closes the connections.

Counters per stage are logged every ``report_interval`` seconds and kept in
:attr:`PipelineService.counters`; with ``metrics_listen`` set they are also served to
Prometheus (:mod:`.metrics`), with ``/healthz``.

Tests: tests/pipeline/test_pipeline_service.py, tests/pipeline/test_pipeline_correctness.py,
tests/pipeline/test_pipeline_metrics.py.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..connection import StoreUnavailable
from ..metrics import MetricsListener, pool_gauges
from ..pool import CONNECTION_ERRORS, DatabasePool, QuietConnection, StoppableDetector
from .config import PipelineConfig
from .metrics import STAGES, PipelineMetrics

log = Logger(namespace="gridcloud.pipeline")

#: The NOTIFY channel ingest signals on (migration 0005's feed trigger).
CHANNEL = "gridcloud_feed"

CLAIM_SQL = "SELECT edge_id, from_seq, upto, failures FROM pipeline_claim(%s, %s)"
PROCESS_SQL = "SELECT * FROM pipeline_process(%s::text[], %s::bigint[], %s::bigint[], %s, %s)"
FAILED_SQL = "SELECT pipeline_failed(%s::text[], %s::bigint[], %s::bigint[], %s, %s, %s)"
SWEEP_SQL = "SELECT raised, cleared FROM pipeline_sweep(%s, %s)"
TRIM_SQL = "SELECT feed, alarms, demand FROM pipeline_trim(%s, %s, %s, %s)"

#: Counter names of pipeline_process()'s result columns, in order.
STAGE_COUNTERS = STAGES

#: Errors that say "try again", not "this record is bad".
TRANSIENT = (psycopg2.errors.TransactionRollbackError, StoreUnavailable, *CONNECTION_ERRORS)

Claim = list[tuple[str, int, int, int]]


class PipelineService(service.Service):
    """One ``gridcloud pipeline`` process: ``concurrency`` processor loops and a sweeper."""

    def __init__(self, reactor: Any, config: PipelineConfig) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = DatabasePool(reactor, config.dsn or "", config.connections)
        self.counters: Counter[str] = Counter()
        #: seconds spent in each kind of transaction (wall clock, in this process)
        self.seconds: dict[str, float] = {"claim": 0.0, "process": 0.0, "sweep": 0.0}
        #: fires once the connections are open (or fails: PostgreSQL unreachable)
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._stopping = False
        self._loops: list[defer.Deferred[None]] = []
        self._wakers: list[defer.Deferred[None]] = []
        #: wake-ups so far: a loop busy when one came looks again instead of going idle
        self._wakes = 0
        self._listener: QuietConnection | None = None
        self._sweeper: task.LoopingCall | None = None
        self._reporter: task.LoopingCall | None = None
        self._reported: Counter[str] = Counter()
        #: the claim of each processor's transaction in flight (filled in by the transaction)
        self._claims: dict[int, Claim] = {}
        #: Prometheus metrics of this process (served when ``config.metrics_listen`` is set)
        self.metrics = PipelineMetrics(self.counters, self.seconds, self._claimed)
        pool_gauges(self.metrics.registry, "gridcloud_pipeline", self.pool)
        self.metrics_listener: MetricsListener | None = None
        if config.metrics_listen:
            self.metrics_listener = MetricsListener(
                reactor, config.metrics_listen, self.metrics.registry, self.health)

    def _claimed(self) -> tuple[int, int]:
        """(edges, records) claimed by the transactions in flight."""
        claims = [c for claim in self._claims.values() for c in claim]
        return len(claims), sum(upto - start for _, start, upto, _ in claims)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/healthz``: processing, and PostgreSQL reachable."""
        if not self.running or self._stopping:
            return False, "stopping"
        if not self.ready.called or not self._loops:
            return False, "starting"
        if not self.pool.available:
            return False, "PostgreSQL unreachable"
        return True, "ok"

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self.ready.errback)

    async def _start(self) -> None:
        if self.metrics_listener is not None:  # first: /healthz says "starting" meanwhile
            await self.metrics_listener.listen()
        await self.pool.start()
        await self._listen()
        if self._stopping:
            return
        for slot in range(self.config.concurrency):
            self._loops.append(defer.ensureDeferred(self._run(slot)))
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.config.sweep_interval, now=True).addErrback(
            lambda f: log.failure("sweeper stopped", f))
        self._reporter = task.LoopingCall(self._report)
        self._reporter.clock = self.reactor
        self._reporter.start(self.config.report_interval, now=False)
        log.info("pipeline running: {n} processor(s), batches of {edges} edge(s) x {size}"
                 " record(s)", n=self.config.concurrency, edges=self.config.batch_edges,
                 size=self.config.batch_size)

    async def _listen(self) -> None:
        listener = QuietConnection(self.reactor, detector=StoppableDetector(self.reactor))
        try:
            await listener.connect(self.config.dsn)
            listener.addNotifyObserver(lambda _notify: self.wake())
            await listener.runOperation(f"LISTEN {CHANNEL}")
        except psycopg2.Error as exc:  # polling still works
            log.warn("cannot LISTEN ({why}): polling every {s} s only",
                     why=str(exc).strip(), s=self.config.poll_interval)
            listener.shut()  # not left open (nor reconnecting) in the reactor
            return
        self._listener = listener

    def stopService(self) -> defer.Deferred[None]:
        """Drain: finish the transactions in flight, start no more, close the connections."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        for call in (self._sweeper, self._reporter):
            if call is not None and call.running:
                call.stop()
        self.wake()
        loops = list(self._loops)

        def close(_: object) -> Any:
            self._report()
            if self._listener is not None:
                self._listener.shut()  # and its reconnection, if PostgreSQL was down
            self.pool.close()
            if self.metrics_listener is not None:  # last: scraped until the drain is done
                return self.metrics_listener.stopService()
            return None

        d: defer.Deferred[Any] = defer.DeferredList(loops, consumeErrors=True)
        d.addCallback(close)
        return d

    def wake(self) -> None:
        """Something new may be there (NOTIFY, a full batch, a batch's retry time, stopping):
        every idle loop looks, and a busy one looks again before it goes idle."""
        self._wakes += 1
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.called:
                waker.callback(None)

    async def _idle(self, seconds: float, since: int | None = None) -> None:
        """Wait for a wake-up or ``seconds``, whichever comes first; not at all if a wake-up
        came after the count ``since`` (it would be lost: e.g. a failed batch's retry time
        passing while every loop was claiming, before that time, and found nothing)."""
        if since is not None and self._wakes != since:
            return
        waker: defer.Deferred[None] = defer.Deferred()
        self._wakers.append(waker)

        def expire() -> None:
            if not waker.called:
                waker.callback(None)

        timer = self.reactor.callLater(seconds, expire)
        await waker
        if timer.active():
            timer.cancel()

    # -- the processor loop ----------------------------------------------------------------

    async def _run(self, slot: int) -> None:
        backoff = self.config.retry_backoff
        while not self._stopping:
            claim: Claim = []
            wakes = self._wakes
            started = time.perf_counter()
            try:
                result = await self._in_flight(slot, claim)
            except TRANSIENT as exc:
                if isinstance(exc.__cause__ or exc, psycopg2.errors.TransactionRollbackError):
                    self.counters["conflicts"] += 1  # a deadlock: again at once
                    continue
                self.counters["transient_errors"] += 1
                log.warn("processor {slot}: {why}; again in {s:.1f} s", slot=slot,
                         why=str(exc).strip().splitlines()[0] if str(exc).strip() else
                         type(exc).__name__, s=backoff)
                await self._idle(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except psycopg2.Error as exc:
                await self._failed(claim, exc)
                continue
            backoff = self.config.retry_backoff
            elapsed = time.perf_counter() - started
            self.seconds["process" if claim else "claim"] += elapsed
            if not claim:
                await self._idle(self.config.poll_interval, since=wakes)
                continue
            self.metrics.batch_seconds.observe(elapsed)
            self.counters["batches"] += 1
            for name, value in zip(STAGE_COUNTERS, result, strict=True):
                self.counters[name] += value
            if any(upto - start >= self.config.batch_size for _, start, upto, _ in claim):
                self.wake()  # more is waiting: let the idle loops help

    async def _in_flight(self, slot: int, claim: Claim) -> Any:
        """The transaction, its claim counted as in flight until it commits or rolls back."""
        self._claims[slot] = claim
        try:
            return await self.pool.runInteraction(self._transaction, claim)
        finally:
            del self._claims[slot]

    def _transaction(self, cursor: Any, claim: Claim) -> defer.Deferred[Any]:
        """Claim and process one batch in the pool's transaction (``claim`` is filled in)."""

        async def run() -> Any:
            await cursor.execute(CLAIM_SQL, (self.config.batch_edges, self.config.batch_size))
            claim.extend(cursor.fetchall())
            if not claim:
                return None
            await cursor.execute(PROCESS_SQL, (
                [c[0] for c in claim], [c[1] for c in claim], [c[2] for c in claim],
                round(self.config.voltage_min * 10), round(self.config.voltage_max * 10)))
            return cursor.fetchone()

        return defer.ensureDeferred(run())

    async def _failed(self, claim: Claim, exc: psycopg2.Error) -> None:
        """Count a failed batch against its edges (they back off; a lone record is set aside)."""
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.counters["failed_batches"] += 1
        if not claim:
            log.warn("claim failed: {why}", why=reason)
            await self._idle(self.config.retry_backoff)
            return
        try:
            rows = await self.pool.runQuery(FAILED_SQL, (
                [c[0] for c in claim], [c[1] for c in claim], [c[2] for c in claim],
                f"{getattr(exc, 'pgcode', None) or type(exc).__name__}: {reason}",
                self.config.max_attempts, self.config.retry_backoff))
        except (psycopg2.Error, StoreUnavailable) as again:
            log.warn("cannot record a failed batch ({why}): it is retried", why=again)
            await self._idle(self.config.retry_backoff)
            return
        dead = rows[0][0]
        self.counters["dead_letters"] += dead
        # pipeline_failed() set the retry time (backoff doubling per attempt): look then,
        # whatever the poll interval.
        attempts = 1 + max(c[3] for c in claim)
        delay = min(self.config.retry_backoff * 2 ** (attempts - 1), 300.0)
        self.reactor.callLater(0 if dead else delay + 0.01, self.wake)
        edges = ", ".join(f"{e} ({s}, {u}]" for e, s, u, _ in claim)
        if dead:
            log.warn("set {n} record(s) aside after {k} attempts: {why} [{edges}]", n=dead,
                     k=self.config.max_attempts, why=reason, edges=edges)
        else:
            log.warn("batch failed, retried with backoff: {why} [{edges}]", why=reason,
                     edges=edges)

    # -- sweeps and reports ----------------------------------------------------------------

    async def _sweep_once(self) -> None:
        started = time.perf_counter()
        try:
            rows = await self.pool.runQuery(
                SWEEP_SQL, (self.config.silent_intervals, self.config.offline_minutes))
        except (psycopg2.Error, StoreUnavailable) as exc:
            log.warn("sweep failed: {why}", why=str(exc).strip())
            return
        self.seconds["sweep"] += time.perf_counter() - started
        raised, cleared = rows[0]
        self.counters["alarms_raised"] += raised
        self.counters["alarms_cleared"] += cleared
        c = self.config
        try:
            rows = await self.pool.runQuery(
                TRIM_SQL, (c.feed_days, c.alarm_days, c.demand_days, c.trim_batch))
        except (psycopg2.Error, StoreUnavailable) as exc:
            log.warn("trim failed: {why}", why=str(exc).strip())
            return
        for name, n in zip(("trimmed_feed", "trimmed_alarms", "trimmed_demand"), rows[0],
                           strict=True):
            if n:
                self.counters[name] += n

    def _sweep(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._sweep_once())

    def _report(self) -> None:
        if self.counters and self.counters != self._reported:
            self._reported = self.counters.copy()
            log.info("pipeline counters: {counters}",
                     counters=", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())))
