"""The controller's Prometheus metrics: what its parts count, and what is read at scrape time.

The parts add to ``ControllerMetrics`` on the loop (plain numbers, no locks);
gauges (runs by state, queue depth, workers, slots, watch streams, leadership)
are not kept at all: ``collect`` computes them from the controller's memory
when ``/metrics`` is scraped, through ``Gauges``.

Labels, and why each is bounded (docs/metrics.md has the whole list):

- ``code``: a gRPC status name (17 at most);
- ``state``: a run's state (9 at most);
- ``cause``: why a run was marked lost (4 values, below);
- ``operation``: the store operation that failed (``write``, ``read``, ``lease``);
- ``method``: an RPC method (``RpcMetrics``).

Scope, process, run and worker ids are never labels: a fleet has 100,000 of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric

from shards._metrics import (
    DURATION_BUCKETS,
    LATENCY_BUCKETS,
    SIZE_BUCKETS,
    Counts,
    Histogram,
    LabeledHistograms,
    counter,
    counters,
    histogram,
    histograms,
)
from shards.errors import ShardsError
from shards.states import ProcessState

#: Why a run was marked lost.
LOST_SILENT = "worker_silent"  # its worker stopped heartbeating
LOST_RESTARTED = "worker_restarted"  # its worker registered again as another process
LOST_UNLISTED = "not_listed"  # its worker's heartbeat no longer lists it
LOST_UNREACHABLE = "dispatch_failed"  # it could not be handed to its worker
LOST_CAUSES = (LOST_SILENT, LOST_RESTARTED, LOST_UNLISTED, LOST_UNREACHABLE)

END_STATES = tuple(s.value for s in ProcessState if s.is_end)


def code_of(error: BaseException) -> str:
    """The gRPC status name an error is answered with (as ``shards._grpc.status.status_of``)."""
    if isinstance(error, ShardsError):
        return str(error.code.name)
    if isinstance(error, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT.name
    return grpc.StatusCode.INTERNAL.name


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


@dataclass(slots=True)
class ControllerMetrics:
    """What the controller's parts count, on its loop."""

    launches_accepted: int = 0
    launches_deduplicated: int = 0
    launches_refused: Counts = field(default_factory=Counts)
    run_ends: Counts = field(default_factory=lambda: Counts(*((s,) for s in END_STATES)))
    lost_runs: Counts = field(default_factory=lambda: Counts(*((c,) for c in LOST_CAUSES)))
    run_duration: LabeledHistograms = field(default_factory=lambda: LabeledHistograms(DURATION_BUCKETS))
    queue_wait: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS + DURATION_BUCKETS[3:]))
    commit_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    commit_batch_size: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    store_errors: Counts = field(default_factory=lambda: Counts(("write",), ("read",), ("lease",)))
    workers_lost: int = 0
    takeovers: int = 0
    watch_messages: int = 0
    # Whole run logs (run_logs.py): lines received from workers, stored, dropped past a run's cap,
    # and lost (a worker's buffer overflowed before it could send them).
    log_lines_received: int = 0
    log_lines_stored: int = 0
    log_lines_dropped: int = 0
    log_lines_lost: int = 0
    runs_pruned: int = 0

    def run_ended(self, state: ProcessState, started: datetime | None, ended: datetime | None) -> None:
        self.run_ends.inc((state.value,))
        duration = seconds_between(started, ended)
        if duration is not None:
            self.run_duration.observe((state.value,), duration)

    def committed(self, seconds: float, changes: int) -> None:
        self.commit_latency.observe(seconds)
        self.commit_batch_size.observe(changes)


@dataclass(frozen=True, slots=True)
class Gauges:
    """The controller's state now, read at scrape time."""

    leading: bool
    term: int
    runs_by_state: dict[str, int]
    queued_top: int
    queued_children: int
    workers_live: int
    workers_unconfirmed: int
    slots_free: int
    slots_used: int
    watch_streams: int


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def collect(metrics: ControllerMetrics, gauges: Callable[[], Gauges]) -> Iterable[Metric]:
    """Every controller metric, for a scrape."""
    m = metrics
    launches = counters(
        "shards_launches", "Launches answered with a run, new or deduplicated", ["result"], Counts()
    )
    launches.add_metric(["accepted"], m.launches_accepted)
    launches.add_metric(["deduplicated"], m.launches_deduplicated)
    yield launches
    yield counters(
        "shards_launches_refused", "Launches refused, by gRPC status code", ["code"], m.launches_refused
    )
    yield counters("shards_run_ends", "Runs ended, by end state", ["state"], m.run_ends)
    yield counters("shards_lost_runs", "Runs marked lost, by cause", ["cause"], m.lost_runs)
    yield histograms(
        "shards_run_duration_seconds",
        "From a run's start to its end, by end state",
        ["state"],
        m.run_duration,
    )
    yield histogram("shards_run_queue_wait_seconds", "From a run's launch to its start", m.queue_wait)
    yield histogram(
        "shards_commit_duration_seconds", "One group commit: the store's write of a batch", m.commit_latency
    )
    yield histogram("shards_commit_batch_size", "Changes written by one group commit", m.commit_batch_size)
    yield counters(
        "shards_store_errors", "Store operations that failed, by operation", ["operation"], m.store_errors
    )
    yield counter("shards_workers_lost", "Workers that stopped heartbeating", m.workers_lost)
    yield counter("shards_takeovers", "Times this controller took over as the leader", m.takeovers)
    yield counter("shards_watch_messages_sent", "Watch events sent to watchers", m.watch_messages)
    log_lines = counters(
        "shards_run_log_lines", "Run log lines, by what became of them", ["outcome"], Counts()
    )
    for outcome, value in (
        ("received", m.log_lines_received),
        ("stored", m.log_lines_stored),
        ("dropped", m.log_lines_dropped),
        ("lost", m.log_lines_lost),
    ):
        log_lines.add_metric([outcome], value)
    yield log_lines
    yield counter(
        "shards_runs_pruned", "Ended runs deleted by the run retention, logs included", m.runs_pruned
    )

    now = gauges()
    yield _gauge("shards_leader", "1 while this controller leads, 0 while it stands by", int(now.leading))
    yield _gauge("shards_leader_term", "The term this controller leads or last led (0: never)", now.term)
    runs = GaugeMetricFamily("shards_runs", "Active runs now, by state", labels=["state"])
    for state in ProcessState:
        if state.is_active:
            runs.add_metric([state.value], now.runs_by_state.get(state.value, 0))
    yield runs
    queue = GaugeMetricFamily(
        "shards_run_queue_depth", "Scheduled runs waiting for a worker (top-level: a slot)", labels=["kind"]
    )
    queue.add_metric(["top_level"], now.queued_top)
    queue.add_metric(["child"], now.queued_children)
    yield queue
    workers = GaugeMetricFamily("shards_workers", "Known workers now", labels=["status"])
    workers.add_metric(["live"], now.workers_live)
    workers.add_metric(["unconfirmed"], now.workers_unconfirmed)
    yield workers
    slots = GaugeMetricFamily("shards_fleet_slots", "Slots of live workers now", labels=["status"])
    slots.add_metric(["free"], now.slots_free)
    slots.add_metric(["used"], now.slots_used)
    yield slots
    yield _gauge("shards_watch_streams", "Watch streams open now", now.watch_streams)
