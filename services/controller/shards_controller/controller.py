"""The controller's one face: the parts of a leader, composed, for the gRPC services to call.

Everything runs on one asyncio loop. Each request goes to the part that owns
it; this class holds no logic of its own. The data of a launch moves one way
through the parts:

    launch -> state (commit) -> runs (dispatch) -> worker -> reports/ends -> watching

- ``state``: the records in memory (working and committed), stage, commit, publish;
- ``catalog``: define, reset, purge, the first view of a scope, dismiss;
- ``launch``: launch (checks, idempotency) and ``run_queue``: the runs waiting for a worker;
- ``runs``: starting runs on workers; ``stops``: stopping them; ``ends``: their ends;
- ``reports``: what workers report (progress, log lines, ends);
- ``fleet``: worker registration, heartbeats, reconciliation, the sweep;
- ``takeover``: taking over a term and stepping down;
- ``timeouts``: a run's deadline (it is stopped there, and fails);
- ``retries``: the next attempt of a run that failed or was lost;
- ``schedules``: launching at each cron fire time, once; ListSchedules, pause, resume;
- ``watching``: serving watches; ``reads``: reads of runs and workers;
- ``run_logs``: whole run logs (stored in chunks, pages, followers); ``retention``: pruning ended runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from shards.models import (
    DefineResult,
    ProcessFilter,
    ProcessRecord,
    Run,
    ScheduleInfo,
    ScopeSummary,
    WatchEvent,
    WorkerInfo,
)
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_controller.active_runs import ActiveRuns
from shards_controller.catalog import Catalog
from shards_controller.commit import Committer
from shards_controller.config import ControllerConfig
from shards_controller.dispatch import Dispatcher, EndsReceived
from shards_controller.ends import Ends
from shards_controller.errors import NotLeader, WatchClosed
from shards_controller.fleet import Fleet
from shards_controller.launch import Launcher, LaunchOutcome, LaunchRequest
from shards_controller.metrics import ControllerMetrics, Gauges
from shards_controller.reads import Reads
from shards_controller.reports import Reports, RunEndReport
from shards_controller.retention import Retention
from shards_controller.retries import Retries
from shards_controller.run_logs import LogPage, RunLogs
from shards_controller.run_queue import RunQueue
from shards_controller.runs import Runs
from shards_controller.schedules import Schedules
from shards_controller.state import State
from shards_controller.stops import Stops
from shards_controller.store import Store
from shards_controller.takeover import TakeOver
from shards_controller.timeouts import Timeouts
from shards_controller.watch import WatchHub
from shards_controller.watching import Watching
from shards_controller.workers import WorkerPool

__all__ = [
    "Controller",
    "LaunchOutcome",
    "LaunchRequest",
    "NotLeader",
    "RunEndReport",
    "WatchClosed",
]


class Controller:
    """One controller process: a leader that serves, or a standby that redirects."""

    def __init__(self, config: ControllerConfig, store: Store) -> None:
        self.store = store
        self.hub = WatchHub(config.change_log_size, config.watcher_max_pending_states)
        self.pool = WorkerPool(config.worker_timeout_s)
        state = self._state = State(config, store, self.hub)
        active = self._active = ActiveRuns()
        queue = self._run_queue = RunQueue(self.pool, active)
        self._catalog = Catalog(state, self.pool)
        ends = Ends(state, active, self.pool)
        stops = self._stops = Stops(state, active, self.pool, ends)
        runs = self._runs = Runs(state, active, self.pool, queue, ends, stops)
        ends.slot_freed = runs.dispatch_ready  # a slot freed goes to the next run in the queue
        ends.run_ended = self._catalog.run_ended  # a record no workers list goes when its run ends
        self._launcher = Launcher(state, active, self.pool, queue, self._catalog, runs)
        logs = self._logs = RunLogs(state)
        logs.tailed = active.append_logs
        retention = self._retention = Retention(state, active)

        def log_ended(
            run: Run,
        ) -> None:  # its log is stored, then forgotten; its process may have a run too many
            logs.ended(run)
            retention.ended(run)

        ends.log_ended = log_ended
        ends.log_counts = logs.counts
        self._reports = Reports(state, active, ends, logs)
        self._fleet = Fleet(state, active, self.pool, queue, ends, stops, runs)
        self._reads = Reads(state, active, self.pool)
        self._watching = Watching(state)
        self._takeover = TakeOver(state, active, self.pool, queue, runs, self._fleet, self._watching)
        timeouts = Timeouts(state, active, stops)
        runs.started = timeouts.arm
        retries = self._retries = Retries(state, active, self._reads)
        retries.launcher = self._launcher
        ends.plan_retry = retries.plan

        def restored() -> None:
            timeouts.arm_active()
            retries.arm_all()

        self._takeover.restored = restored
        self._schedules = Schedules(state, self._launcher)
        self._takeover.loops.append(self._schedules.loop)
        self._takeover.loops.append(logs.flush_loop)
        self._takeover.loops.append(retention.loop)
        self._takeover.restore_logs = self._restore_logs
        self._takeover.store_logs = logs.flush
        self._takeover.forget_logs = logs.reset
        state.on_stale_term = lambda: state.spawn(self._takeover.step_down(term=state.term))

    # ------------------------------------------------------------ leadership

    @property
    def config(self) -> ControllerConfig:
        return self._state.config

    @config.setter
    def config(self, config: ControllerConfig) -> None:
        self._state.config = config

    @property
    def term(self) -> int:
        return self._state.term

    @property
    def leader_address(self) -> str:
        return self._state.leader_address

    @leader_address.setter
    def leader_address(self, address: str) -> None:
        self._state.leader_address = address

    @property
    def on_leadership_change(self) -> Callable[[bool], Awaitable[None]] | None:
        """Told of every change of leadership, however it came (the health service listens)."""
        return self._takeover.on_leadership_change

    @on_leadership_change.setter
    def on_leadership_change(self, listener: Callable[[bool], Awaitable[None]] | None) -> None:
        self._takeover.on_leadership_change = listener

    @property
    def is_leader(self) -> bool:
        return self._state.leading

    @property
    def committer(self) -> Committer:
        return self._state.committer

    def require_leader(self) -> None:
        self._state.require_leader()

    async def become_leader(self, term: int) -> None:
        await self._takeover.become_leader(term)

    async def step_down(self, leader_address: str = "", *, term: int | None = None) -> None:
        await self._takeover.step_down(leader_address, term=term)

    # ------------------------------------------------------------ reads

    def list_processes(self, process_filter: ProcessFilter) -> tuple[list[ProcessRecord], int]:
        return self._state.list_processes(process_filter)

    def get_process(self, scope_id: str, process_id: str) -> ProcessRecord:
        return self._state.get_process(scope_id, process_id)

    def list_scopes(self) -> list[ScopeSummary]:
        return self._reads.list_scopes()

    def list_workers(self) -> list[WorkerInfo]:
        return self._reads.list_workers()

    async def list_runs(self, scope_id: str, process_id: str, limit: int, after: str = "") -> list[Run]:
        return await self._reads.list_runs(scope_id, process_id, limit, after)

    async def get_run(self, run_id: str, wait_until_ended: bool, *, follow_retries: bool = False) -> Run:
        run = await self._reads.get_run(run_id, wait_until_ended)
        if wait_until_ended and follow_retries:
            run = await self._retries.last_attempt(run)
        return run

    async def run_worker(self, run_id: str) -> str | None:
        return await self._reads.run_worker(run_id)

    def watch(self, process_filter: ProcessFilter, from_revision: int) -> AsyncIterator[WatchEvent]:
        return self._watching.watch(process_filter, from_revision)

    # ------------------------------------------------------------ run logs

    async def _restore_logs(self, run_ids: list[str]) -> None:
        self._logs.restore(run_ids)

    def log_received(self, run_id: str) -> int:
        """The lines of ``run_id``'s log this controller has (0 while unknown)."""
        return self._logs.counts(run_id)[0]

    def log_stored(self, run_ids: Iterable[str]) -> dict[str, int]:
        return self._logs.stored_offsets(run_ids)

    async def get_run_log(self, run: Run, offset: int, limit: int) -> LogPage:
        return await self._logs.page(run, offset, limit)

    def follow_run_log(self, run_id: str, offset: int) -> AsyncIterator[LogPage]:
        return self._logs.follow(lambda: self._reads.get_run(run_id, False), offset)

    # ------------------------------------------------------------ the catalog

    async def define_processes(self, scope_id: str, only_if_missing: bool, clean: bool) -> DefineResult:
        return await self._catalog.define_processes(scope_id, only_if_missing, clean)

    async def reset_processes(self, scope_id: str) -> DefineResult:
        return await self._catalog.reset_processes(scope_id)

    async def first_view(self, scope_id: str) -> None:
        """Define a scope with no records, if a worker serves it (before it is listed or watched)."""
        self._state.require_leader()
        await self._catalog.first_view(scope_id)

    async def purge_processes(self, scope_id: str) -> int:
        return await self._catalog.purge_processes(scope_id)

    async def dismiss_messages(self, scope_id: str, process_id: str) -> ProcessRecord:
        return await self._catalog.dismiss_messages(scope_id, process_id)

    # ------------------------------------------------------------ runs

    async def launch(self, request: LaunchRequest) -> LaunchOutcome:
        return await self._launcher.launch(request)

    def list_schedules(self, scope_id: str) -> list[ScheduleInfo]:
        return self._schedules.list_schedules(scope_id)

    async def set_schedule_paused(self, scope_id: str, process_id: str, paused: bool) -> ScheduleInfo:
        return await self._schedules.set_paused(scope_id, process_id, paused)

    async def stop_process(
        self, scope_id: str, process_id: str, stop_grace_s: float | None = None
    ) -> ProcessRecord:
        return await self._stops.stop_process(scope_id, process_id, stop_grace_s)

    def push_events(self, worker_id: str, events: Iterable[tuple[pb.RunEvent, list[str]]]) -> int:
        return self._reports.push_events(worker_id, events)

    async def finish_runs(self, worker_id: str, ends: Sequence[RunEndReport]) -> None:
        await self._reports.finish_runs(worker_id, ends)

    def take_ends_on_streams(self, apply: EndsReceived | None) -> None:
        """Have workers send their runs' ends back on the ExecuteProcess streams, applied by
        ``apply`` (None: by FinishRun, as to a controller before this one)."""
        self._runs.dispatcher.ends_received = apply

    # ------------------------------------------------------------ workers

    async def register_worker(
        self,
        worker_id: str,
        address: str,
        capacity: int,
        scopes: tuple[str, ...],
        running: set[str],
        incarnation: str = "",
        worker_key: str = "",
        runs_received: int | None = None,
    ) -> None:
        await self._fleet.register_worker(
            worker_id, address, capacity, scopes, running, incarnation, worker_key, runs_received
        )

    async def heartbeat(
        self, worker_id: str, incarnation: str, running: set[str], runs_received: int | None = None
    ) -> bool:
        return await self._fleet.heartbeat(worker_id, incarnation, running, runs_received)

    # ------------------------------------------------------------ metrics

    @property
    def metrics(self) -> ControllerMetrics:
        return self._state.metrics

    def gauges(self) -> Gauges:
        """The state now, for a scrape of ``/metrics`` (computed here, never kept up to date)."""
        by_state: dict[str, int] = {}
        for run in self._active.runs.values():
            by_state[run.state.value] = by_state.get(run.state.value, 0) + 1
        workers = self.pool.all()
        live = [w for w in workers if w.alive and w.confirmed]
        return Gauges(
            leading=self._state.leading,
            term=self._state.term,
            runs_by_state=by_state,
            queued_top=len(self._run_queue.top),
            queued_children=len(self._run_queue.children),
            workers_live=len(live),
            workers_unconfirmed=sum(1 for w in workers if w.alive and not w.confirmed),
            slots_free=sum(w.free_slots for w in live),
            slots_used=sum(min(len(w.slots_used), w.capacity) for w in live),
            watch_streams=self.hub.watcher_count,
        )

    # ------------------------------------------------------------ for tests that look inside

    @property
    def _queue(self) -> deque[str]:
        """The top-level runs waiting for a slot, in order."""
        return self._run_queue.top

    @property
    def _dispatcher(self) -> Dispatcher:
        return self._runs.dispatcher
