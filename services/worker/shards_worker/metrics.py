"""The worker's Prometheus metrics: what its runner and link count, and what is read at scrape time.

Counted on the worker's loop (plain numbers); runs in flight and slots are
computed when ``/metrics`` is scraped. Labels: ``kind`` (``top_level`` or
``child``) and ``status`` (``busy`` or ``free``). No run, scope or process id is a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from shards._metrics import Counts, counter, counters


@dataclass(slots=True)
class WorkerMetrics:
    progress_batches: int = 0
    finish_retries: int = 0
    reconnects: int = 0
    # Ends reported, by way: back on the ExecuteProcess stream, or by FinishRun (when the stream did not).
    ends: Counts = field(default_factory=lambda: Counts(("stream",), ("finish_run",)))


@dataclass(frozen=True, slots=True)
class WorkerGauges:
    runs_top_level: int
    runs_children: int
    capacity: int
    slots_busy: int


def collect(metrics: WorkerMetrics, gauges: Callable[[], WorkerGauges]) -> Iterable[Metric]:
    yield counter(
        "shards_worker_progress_batches_shipped",
        "Batches of progress and log lines sent to the controller",
        metrics.progress_batches,
    )
    yield counter(
        "shards_worker_finish_run_retries",
        "FinishRun calls retried (the controller did not answer)",
        metrics.finish_retries,
    )
    yield counters(
        "shards_worker_ends_reported",
        "Run ends the controller took, by way: back on the ExecuteProcess stream, or by FinishRun",
        ["way"],
        metrics.ends,
    )
    yield counter(
        "shards_worker_reconnects",
        "Times the worker registered again with a controller (its restart, a take-over, a lost link)",
        metrics.reconnects,
    )
    now = gauges()
    runs = GaugeMetricFamily("shards_worker_runs", "Runs in flight (code not yet returned)", labels=["kind"])
    runs.add_metric(["top_level"], now.runs_top_level)
    runs.add_metric(["child"], now.runs_children)
    yield runs
    slots = GaugeMetricFamily("shards_worker_slots", "This worker's slots (its capacity)", labels=["status"])
    slots.add_metric(["busy"], now.slots_busy)
    slots.add_metric(["free"], max(0, now.capacity - now.slots_busy))
    yield slots
