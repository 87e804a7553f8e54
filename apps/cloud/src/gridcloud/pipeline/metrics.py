"""Prometheus metrics of one ``gridcloud pipeline`` process.

Why a collector reading :attr:`PipelineService.counters` at scrape time rather
than prometheus-client Counters incremented beside them: the service already
counts its work per stage for its log line, and one set of numbers cannot
drift from the other.  Only what the log does not keep is observed here: the
batch latency histogram and the records claimed by transactions still in
flight.

The lag (records ingested and not processed) is not here: no pipeline process
knows the whole of it; every serve node samples it from PostgreSQL
(gridcloud.metrics.DatabaseGauges).  Served by gridcloud.metrics.MetricsListener
when ``metrics_listen`` is set; names in docs/operations.md ("Reading the
metrics").

Tests: tests/pipeline/test_pipeline_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: The result columns of pipeline_process() (service.STAGE_COUNTERS), the ``stage`` label.
STAGES = ("readings", "aggregate_rows", "ledger_rows", "relay_requests",
          "alarms_raised", "alarms_cleared", "evictions")

#: ``reason`` label of retries -> the service's counter: a deadlock or serialisation failure
#: (again at once), a lost database (again with backoff), a batch that failed on its records
#: (counted against them; again with backoff, then set aside).
RETRIES = {"conflict": "conflicts", "database": "transient_errors", "failed": "failed_batches"}

#: ``table`` label of rows deleted by retention -> the service's counter.
TRIMS = {"feed_log": "trimmed_feed", "alarms": "trimmed_alarms", "demand": "trimmed_demand"}

#: One claim-and-process transaction: tens of ms for a full batch on a healthy database.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Counters(Collector):
    """The service's counters and in-flight claims, read when Prometheus scrapes."""

    def __init__(self, counters: Mapping[str, int], seconds: Mapping[str, float],
                 claimed: Callable[[], tuple[int, int]]) -> None:
        self._counters = counters
        self._seconds = seconds
        self._claimed = claimed

    def collect(self) -> Iterator[Any]:
        c = self._counters
        records = CounterMetricFamily(
            "gridcloud_pipeline_records",
            "what pipeline_process() did, by stage: readings acknowledged, aggregate and ledger "
            "rows written, relay requests, alarms raised and cleared (the sweeps' included), "
            "readings evicted", labels=["stage"])
        for stage in STAGES:
            records.add_metric([stage], c.get(stage, 0))
        yield records
        yield CounterMetricFamily("gridcloud_pipeline_batches",
                                  "batches processed and committed", value=c.get("batches", 0))
        retries = CounterMetricFamily(
            "gridcloud_pipeline_retries",
            "transactions retried, by reason (conflict, database, failed)", labels=["reason"])
        for reason, name in RETRIES.items():
            retries.add_metric([reason], c.get(name, 0))
        yield retries
        yield CounterMetricFamily(
            "gridcloud_pipeline_records_set_aside",
            "records set aside in pipeline_dead_letters by this process",
            value=c.get("dead_letters", 0))
        trimmed = CounterMetricFamily(
            "gridcloud_pipeline_trimmed_rows", "rows deleted by retention, by table",
            labels=["table"])
        for table, name in TRIMS.items():
            trimmed.add_metric([table], c.get(name, 0))
        yield trimmed
        busy = CounterMetricFamily(
            "gridcloud_pipeline_transaction_seconds",
            "seconds spent in transactions, by kind (claim: found nothing, process, sweep)",
            labels=["kind"])
        for kind in ("claim", "process", "sweep"):
            busy.add_metric([kind], self._seconds.get(kind, 0.0))
        yield busy
        edges, pending = self._claimed()
        yield GaugeMetricFamily("gridcloud_pipeline_claimed_edges",
                                "edges claimed by transactions in flight", value=edges)
        yield GaugeMetricFamily(
            "gridcloud_pipeline_claimed_records",
            "records claimed by transactions in flight (claimed, not yet committed)",
            value=pending)


class PipelineMetrics:
    """The registry of one pipeline process: its counters, batch latency, in-flight claims."""

    def __init__(self, counters: Mapping[str, int], seconds: Mapping[str, float],
                 claimed: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Counters(counters, seconds, claimed))
        self.batch_seconds = Histogram(
            "gridcloud_pipeline_batch_seconds",
            "one claim-and-process transaction that found work, from BEGIN to COMMIT",
            buckets=BATCH_BUCKETS, registry=self.registry)
