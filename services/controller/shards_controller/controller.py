"""The controller's domain core: process records, runs, workers and watchers.

Everything runs on one asyncio loop. An operation checks and stages its change
synchronously (so two concurrent requests cannot both pass a check), then
waits for the committer to persist it. State lives in memory twice:

- ``_working``: the newest staged records, used to decide (e.g. to refuse a
  second launch while the first is being written);
- ``_committed``: what is persisted and published, used to answer reads and
  to start watches, so nobody is ever told of a state that could be lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from shards._aio import cancel_and_wait
from shards.convert import info_from_proto
from shards.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShardsError,
    Unavailable,
)
from shards.models import (
    ProcessFilter,
    ProcessInfo,
    ProcessRecord,
    Progress,
    Run,
    ScopeSummary,
    WatchEvent,
    WatchEventType,
    WorkerInfo,
    sort_key,
)
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.states import ProcessState
from shards_controller import scopes, transitions
from shards_controller.commit import Committer
from shards_controller.config import ControllerConfig
from shards_controller.dispatch import Dispatcher
from shards_controller.store import StaleTerm, Store, WriteBatch
from shards_controller.watch import Change, WatcherClosed, WatcherOverflow, WatchHub
from shards_controller.workers import WorkerEntry, WorkerPool

log = logging.getLogger(__name__)
S = ProcessState
T = TypeVar("T")
Key = tuple[str, str]

LOG_TAIL_LINES = 50
# A new leader numbers its changes from the highest stored revision plus this:
# revisions its predecessor published but never persisted (progress, written
# behind) stay below it, so a watcher resuming from one is replayed from the
# journal instead of being reset.
REVISION_GAP = 1_000_000
MAX_LOG_LINE_LENGTH = 4096


class NotLeader(Unavailable):
    """This controller is a standby; ``leader_address`` is where the leader answers."""

    def __init__(self, leader_address: str) -> None:
        where = f"; the leader is at {leader_address}" if leader_address else "; no leader is known yet"
        super().__init__(f"this controller is not the leader{where}")
        self.leader_address = leader_address


class WatchClosed(Unavailable):
    """The controller stopped leading while a watch was open; resume on the new leader."""


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    scope_id: str
    process_id: str
    idempotency_key: str = ""
    parent_run_id: str = ""
    definition: ProcessInfo | None = None
    preferred_worker_id: str = ""


@dataclass(frozen=True, slots=True)
class RunEndReport:
    """A worker's report of how one of its runs ended."""

    run_id: str
    state: ProcessState
    error: str = ""
    progress: Progress | None = None
    log_lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LaunchOutcome:
    run_id: str
    process: ProcessRecord
    deduplicated: bool


def _now() -> datetime:
    # Milliseconds: what MongoDB stores, so a record reads back equal from every store.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _new_run_id() -> str:
    # Time-ordered prefix: run ids sort roughly by creation, which helps humans.
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:16]}"


class Controller:
    """One controller process: a leader that serves, or a standby that redirects."""

    def __init__(self, config: ControllerConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.hub = WatchHub(config.change_log_size, config.watcher_max_pending_states)
        self.pool = WorkerPool(config.worker_timeout_s)
        self.term = 0
        self.leader_address = ""
        self._leading = False
        self._committer: Committer | None = None
        # Told of every change of leadership, however it came (the health service listens).
        self.on_leadership_change: Callable[[bool], Awaitable[None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._dispatcher = Dispatcher(config.dispatch_timeout_s, self._executed, self._spawn)
        # Taking over and stepping down, one at a time: both await the store,
        # and a step-down spawned by a stale write must neither interleave with
        # a take-over nor end the leadership that follows its own.
        self._transition = asyncio.Lock()
        self._reset_memory()

    def _reset_memory(self) -> None:
        self._working: dict[str, dict[str, ProcessRecord]] = {}
        self._committed: dict[str, dict[str, ProcessRecord]] = {}
        self._revision = 0
        self._committed_revision = 0
        self._journal_floor = 0  # every journal entry after this revision is still stored
        self._runs: dict[str, Run] = {}  # active runs
        self._children: dict[str, set[str]] = {}  # parent run id -> active child run ids
        self._idempotency: dict[str, str] = {}  # key -> run id
        self._preferred: dict[str, str] = {}  # run id -> preferred worker id
        self._acked_at: dict[str, float] = {}  # run id -> when its worker confirmed it (monotonic)
        # Runs a predecessor handed to a worker: not yet confirmed by that worker to us.
        self._restored: set[str] = set()
        self._log_tails: dict[str, deque[str]] = {}
        # Scheduled run ids: top-level runs wait for a free slot, children only
        # for a live worker (they need no slot), so they queue apart.
        self._queue: deque[str] = deque()
        self._child_queue: deque[str] = deque()
        self._waiters: dict[str, list[asyncio.Future[Run]]] = {}

    # ------------------------------------------------------------ leadership

    @property
    def is_leader(self) -> bool:
        return self._leading

    def require_leader(self) -> None:
        if not self._leading:
            raise NotLeader(self.leader_address)

    async def become_leader(self, term: int) -> None:
        """Load the store and start serving as the leader of ``term``."""
        async with self._transition:
            if self._leading:
                return
            try:
                await self._take_over(term)
            except BaseException:
                await self._abandon_take_over()
                raise

    async def _abandon_take_over(self) -> None:
        """A take-over that failed or was cancelled leaves nothing running."""
        committer, self._committer = self._committer, None
        if committer is not None:
            await committer.abandon()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self._reset_memory()

    async def _take_over(self, term: int) -> None:
        self._reset_memory()
        self.term = term
        records = await self.store.load_records()
        for record in records:
            self._working.setdefault(record.scope_id, {})[record.process_id] = record
            self._committed.setdefault(record.scope_id, {})[record.process_id] = record
        stored_revision = await self.store.max_revision()
        self._revision = self._committed_revision = stored_revision + (REVISION_GAP if stored_revision else 0)
        self.hub.reset(self._revision)
        self._journal_floor = await self._oldest_journaled() - 1
        for worker in await self.store.load_workers():
            # Alive until silent for twice the timeout: first it must find us.
            self.pool.restore(worker, grace_s=self.config.worker_timeout_s)
        repairs = await self._restore_runs(records)
        self._committer = Committer(
            self.store, term, self._publish, self._commit_failed, self.config.progress_flush_interval_s
        )
        self._committer.start()
        if repairs:
            await self.committer.commit(repairs)
        self._leading = True
        self.leader_address = self.config.address
        self._tasks = [
            asyncio.create_task(self._sweep_loop(), name="sweeper"),
            asyncio.create_task(self._prune_journal_loop(), name="journal-pruner"),
        ]
        if self.on_leadership_change is not None:
            await self.on_leadership_change(True)
        log.info(
            "leading (term %d): %d records, %d active runs, revision %d",
            term,
            len(records),
            len(self._runs),
            self._revision,
        )
        self._dispatch_ready()

    async def _restore_runs(self, records: list[ProcessRecord]) -> list[tuple[Change, Run | None]]:
        """Take over the active runs; returns the repairs to commit.

        A batch is not atomic on MongoDB: a predecessor killed while writing
        one may leave a run (written first) ahead of its record (written
        after). The record holds what was acknowledged, so the run is aligned
        to it; a run whose record never took it is a launch that was never
        acknowledged, and is completed (its client retries with the same key).
        """
        stored = {run.run_id: run for run in await self.store.load_active_runs()}
        repairs: list[tuple[Change, Run | None]] = []
        restored: list[Run] = []
        for record in records:
            if not record.state.is_active:
                continue
            run = stored.pop(record.run_id, None) or await self.store.get_run(record.run_id)
            if run is None:
                log.error("record %s/%s names run %s, which is not stored", *record.key, record.run_id)
                continue
            if run.state is not record.state or run.worker_id != record.worker_id:
                run = replace(
                    run,
                    state=record.state,
                    worker_id=record.worker_id,
                    started_at=record.running_since,
                    ended_at=None,
                )
                repairs.append((self._stage(record), run))
            restored.append(run)
        superseded: list[Run] = []
        for run in stored.values():
            current = self._record(run.scope_id, run.process_id)
            if current is not None and current.state.is_active:
                superseded.append(
                    replace(run, state=S.FAILED, error="superseded by another launch", ended_at=_now())
                )
                continue
            record = current or ProcessRecord(run.scope_id, run.process_id, name=run.process_id)
            run = replace(run, state=S.SCHEDULED, worker_id="", started_at=None)
            repairs.append((self._stage(transitions.schedule(record, run)), run))
            restored.append(run)
        if superseded:
            await self.store.write(WriteBatch(runs=superseded), self.term)
        for run in sorted(restored, key=lambda r: r.created_at or _now()):
            self._track_run(run)
            if run.state is S.SCHEDULED:
                self._enqueue(run)
                continue
            entry = self.pool.get(run.worker_id)
            if entry is None:
                entry = self.pool.restore(WorkerInfo(run.worker_id, address="unknown:0"))
                entry.last_seen = 0.0  # never heard of: expires at the first sweep
            self.pool.assign(entry, run.run_id, needs_slot=not run.parent_run_id)
            self._restored.add(run.run_id)  # the worker's next heartbeat tells whether it has it
        return repairs

    async def step_down(self, leader_address: str = "", *, term: int | None = None) -> None:
        """Stop serving: another controller leads now (or we are shutting down).

        With ``term``, only if this controller still leads that term.
        """
        async with self._transition:
            if not self._leading or (term is not None and term != self.term):
                return
            await self._step_down(leader_address)

    async def _step_down(self, leader_address: str) -> None:
        self._leading = False
        self.leader_address = leader_address
        self._dispatcher.close()
        await cancel_and_wait([*self._tasks, *self._background])
        self._tasks = []
        self._background = set()
        if self._committer is not None:
            try:
                await self._committer.stop()
            except (StaleTerm, Exception) as error:
                log.warning("final write on stepping down failed: %s", error)
            self._committer = None
        self.hub.close_all()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(NotLeader(leader_address))
        await self.pool.close()
        self._reset_memory()
        if self.on_leadership_change is not None:
            await self.on_leadership_change(False)
        log.info("stepped down (leader now: %s)", leader_address or "unknown")

    # ------------------------------------------------------------ staging and committing

    @property
    def committer(self) -> Committer:
        if self._committer is None:
            raise NotLeader(self.leader_address)
        return self._committer

    def _record(self, scope_id: str, process_id: str) -> ProcessRecord | None:
        return self._working.get(scope_id, {}).get(process_id)

    def _stage(self, record: ProcessRecord, *, state_change: bool = True) -> Change:
        """Give ``record`` the next revision and make it the working record."""
        self._revision += 1
        record = replace(record, revision=self._revision)
        self._working.setdefault(record.scope_id, {})[record.process_id] = record
        return Change(self._revision, record.scope_id, record.process_id, record, state_change)

    def _stage_removal(self, scope_id: str, process_id: str) -> Change:
        self._revision += 1
        scope = self._working.get(scope_id, {})
        scope.pop(process_id, None)
        if not scope:
            self._working.pop(scope_id, None)
        return Change(self._revision, scope_id, process_id, None, True)

    def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            if change.record is None:
                scope = self._committed.get(change.scope_id, {})
                scope.pop(change.process_id, None)
                if not scope:
                    self._committed.pop(change.scope_id, None)
            else:
                self._committed.setdefault(change.scope_id, {})[change.process_id] = change.record
            self._committed_revision = max(self._committed_revision, change.revision)
        self.hub.log(changes)
        # The watchers get the changes on the loop's next turn, after the
        # callers the commit woke: a launch's dispatch to its worker is written
        # before the watch streams, not after them. A watch that starts in
        # between has the changes in its snapshot, and skips them (its ``cut``).
        asyncio.get_running_loop().call_soon(self.hub.fan_out, changes)

    def _commit_failed(self, changes: list[Change], error: BaseException) -> None:
        # Undo what the failed write staged, unless a later change replaced it.
        for change in changes:
            current = self._record(change.scope_id, change.process_id)
            if current is change.record or (change.record is None and current is None):
                committed = self._committed.get(change.scope_id, {}).get(change.process_id)
                if committed is None:
                    self._working.get(change.scope_id, {}).pop(change.process_id, None)
                else:
                    self._working.setdefault(change.scope_id, {})[change.process_id] = committed
        if isinstance(error, StaleTerm):
            self._spawn(self.step_down(term=self.term))

    async def _commit(self, change: Change, run: Run | None = None) -> None:
        await self._commit_all([(change, run)])

    async def _commit_all(self, changes: list[tuple[Change, Run | None]]) -> None:
        """Persist and publish ``changes``; store failures become the caller's status."""
        try:
            await self.committer.commit(changes)
        except StaleTerm as error:
            raise NotLeader("") from error
        except ShardsError:
            raise
        except Exception as error:
            raise Unavailable(f"the store did not accept the change: {error}") from error

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _from_store(self, read: Awaitable[T]) -> T:
        """A store read on a request's path: when it fails, the store is unavailable (the
        caller may retry), as with a failed write; never an internal error of ours."""
        try:
            return await read
        except Exception as error:
            raise Unavailable(f"the store could not be read: {error}") from error

    # ------------------------------------------------------------ reads

    def list_processes(self, process_filter: ProcessFilter) -> tuple[list[ProcessRecord], int]:
        self.require_leader()
        scope = self._committed.get(process_filter.scope_id, {})
        records = sorted((r for r in scope.values() if process_filter.matches(r)), key=sort_key)
        return records, self._committed_revision

    def get_process(self, scope_id: str, process_id: str) -> ProcessRecord:
        self.require_leader()
        record = self._committed.get(scope_id, {}).get(process_id)
        if record is None:
            raise NotFound(f"process {process_id!r} is not defined in scope {scope_id!r}")
        return record

    def list_scopes(self) -> list[ScopeSummary]:
        self.require_leader()
        return scopes.summaries(self._committed)

    def list_workers(self) -> list[WorkerInfo]:
        self.require_leader()
        return sorted((w.info() for w in self.pool.all()), key=lambda w: w.worker_id)

    async def list_runs(self, scope_id: str, process_id: str, limit: int) -> list[Run]:
        self.require_leader()
        stored = await self._from_store(self.store.list_runs(scope_id, process_id, limit or 50))
        views = [self._run_view(self._runs.get(run.run_id, run)) for run in stored]
        await self._committed_view()
        return views

    async def get_run(self, run_id: str, wait_until_ended: bool) -> Run:
        self.require_leader()
        run = self._runs.get(run_id)
        if run is None:
            stored = await self._from_store(self.store.get_run(run_id))
            if stored is None:
                raise NotFound(f"run {run_id!r} does not exist")
            return stored
        if not wait_until_ended:
            view = self._run_view(run)
            await self._committed_view()
            return view
        waiter: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(waiter)
        try:
            return await waiter
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[run_id]

    async def _committed_view(self) -> None:
        """Wait until what was read from the working view is persisted.

        Runs in ``_runs`` change before their write is acknowledged; a reader
        takes its view first, then waits here, so it never answers with a
        state the store has not got (or might still refuse).
        """
        try:
            await self.committer.barrier()
        except RuntimeError as error:  # the committer stopped: this controller stepped down
            raise NotLeader(self.leader_address) from error

    def _run_view(self, run: Run) -> Run:
        tail = self._log_tails.get(run.run_id)
        return replace(run, log_tail=tuple(tail)) if tail else run

    # ------------------------------------------------------------ define, purge, dismiss

    async def define_processes(
        self, scope_id: str, only_if_missing: bool, clean: bool
    ) -> list[ProcessRecord]:
        self.require_leader()
        if not (only_if_missing and self._working.get(scope_id)):
            infos = await self._describe_scope(scope_id)
            if infos is None:
                raise Unavailable(f"no live worker serves scope {scope_id!r}, so its processes are unknown")
            await self._define(scope_id, infos, clean)
        records, _ = self.list_processes(ProcessFilter(scope_id))
        return records

    async def _describe_scope(self, scope_id: str) -> list[ProcessInfo] | None:
        for entry in self.pool.any_serving(scope_id):
            try:
                reply = await entry.stub.DescribeScope(
                    pb.DescribeScopeRequest(scope_id=scope_id), timeout=self.config.dispatch_timeout_s
                )
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "worker %s could not describe scope %s: %s", entry.worker_id, scope_id, error.details()
                )
                continue
            return [info_from_proto(definition) for definition in reply.processes]
        return None

    async def _define(self, scope_id: str, infos: Iterable[ProcessInfo], clean: bool) -> None:
        current = dict(self._working.get(scope_id, {}))
        wanted = {info.process_id: info for info in infos}
        changes: list[tuple[Change, Run | None]] = []
        for process_id, info in wanted.items():
            record = current.get(process_id)
            if record is None:
                record = ProcessRecord(scope_id, process_id)
            elif record.info == info:
                continue
            defined = replace(
                record,
                name=info.name,
                detail_level=info.detail_level,
                warning=info.warning,
                special=info.special,
            )
            changes.append((self._stage(defined), None))
        if clean:
            for process_id, record in current.items():
                if process_id not in wanted and not record.state.is_active:
                    changes.append((self._stage_removal(scope_id, process_id), None))
        await self._commit_all(changes)

    async def purge_processes(self, scope_id: str) -> int:
        self.require_leader()
        records = self._working.get(scope_id, {})
        active = sorted(pid for pid, record in records.items() if record.state.is_active)
        if active:
            raise FailedPrecondition(
                f"scope {scope_id!r} has active processes ({', '.join(active[:5])}); stop them before purging"
            )
        changes: list[tuple[Change, Run | None]] = [
            (self._stage_removal(scope_id, pid), None) for pid in sorted(records)
        ]
        await self._commit_all(changes)
        return len(changes)

    async def dismiss_messages(self, scope_id: str, process_id: str) -> ProcessRecord:
        self.require_leader()
        record = self._require_record(scope_id, process_id)
        if record.state.is_active:
            raise FailedPrecondition(
                f"process {process_id!r} is {record.state}; its messages can be dismissed once it has ended"
            )
        change = self._stage(transitions.dismiss(record))
        await self._commit(change)
        assert change.record is not None
        return change.record

    def _require_record(self, scope_id: str, process_id: str) -> ProcessRecord:
        # A controller that stepped down while a request waited on its write
        # has forgotten every record: that is "ask the leader", not "no such process".
        self.require_leader()
        record = self._record(scope_id, process_id)
        if record is None:
            raise NotFound(f"process {process_id!r} is not defined in scope {scope_id!r}")
        return record

    # ------------------------------------------------------------ launch and dispatch

    async def launch(self, request: LaunchRequest) -> LaunchOutcome:
        self.require_leader()
        key = request.idempotency_key
        if key:
            previous = await self._find_idempotent(key)
            if previous is not None:
                outcome = self._deduplicated(previous, request)
                await self._committed_view()
                return outcome
        base = await self._resolve_record(request)
        # Everything below is synchronous: no other request can interleave. A
        # key in memory belongs to an active run (ended runs' keys are in the store).
        if key and key in self._idempotency:
            outcome = self._deduplicated(self._runs[self._idempotency[key]], request)
            await self._committed_view()
            return outcome
        record = self._record(request.scope_id, request.process_id) or base
        if record.state.is_active:
            raise FailedPrecondition(
                f"process {request.process_id!r} in scope {request.scope_id!r} is already {record.state} "
                f"(run {record.run_id}); stop it or wait for it to end before launching it again"
            )
        if request.parent_run_id:
            parent = self._runs.get(request.parent_run_id)
            if parent is None or parent.state is not S.RUNNING:
                raise FailedPrecondition(f"parent run {request.parent_run_id!r} is not running")
        run = Run(
            run_id=_new_run_id(),
            scope_id=request.scope_id,
            process_id=request.process_id,
            state=S.SCHEDULED,
            parent_run_id=request.parent_run_id,
            idempotency_key=key,
            created_at=_now(),
        )
        change = self._stage(transitions.schedule(record, run))
        assert change.record is not None
        self._track_run(run)
        if request.preferred_worker_id:
            self._preferred[run.run_id] = request.preferred_worker_id
        changes: list[tuple[Change, Run | None]] = [(change, run)]
        # A free worker now: its start goes in the same write as the launch
        # (one round trip to the store instead of two before the code starts).
        entry = self._free_worker_for(run)
        if entry is not None:
            new_record, started = transitions.start(change.record, run, entry.worker_id, _now())
            changes.append((self._stage(new_record), started))
            self._runs[run.run_id] = started
        term = self.term
        try:
            await self._commit_all(changes)
        except BaseException:
            if entry is not None:
                self.pool.release(entry.worker_id, run.run_id)
            self._forget_run(run)
            raise
        outcome = LaunchOutcome(run.run_id, change.record, deduplicated=False)
        if not self._leading or self.term != term:
            # Persisted as this controller stepped down (its last write went
            # through): the next leader restores the run and hands it to a worker.
            return outcome
        if entry is not None:
            self._dispatcher.send(self._runs[run.run_id], entry)
        else:
            self._enqueue(run)
            self._dispatch_ready()
        return outcome

    def _free_worker_for(self, run: Run) -> WorkerEntry | None:
        """A worker to take ``run`` right away (reserved), unless others wait before it."""
        needs_slot = not run.parent_run_id
        waiting = self._queue if needs_slot else self._child_queue
        if waiting:
            return None
        entry = self.pool.choose(run.scope_id, needs_slot, self._preferred.get(run.run_id, ""))
        if entry is not None:
            self.pool.assign(entry, run.run_id, needs_slot)
        return entry

    def _enqueue(self, run: Run, *, front: bool = False) -> None:
        queue = self._child_queue if run.parent_run_id else self._queue
        if front:
            queue.appendleft(run.run_id)
        else:
            queue.append(run.run_id)

    async def _find_idempotent(self, key: str) -> Run | None:
        run_id = self._idempotency.get(key)
        if run_id is not None and run_id in self._runs:
            return self._runs[run_id]
        return await self._from_store(self.store.find_run_by_idempotency_key(key))

    def _deduplicated(self, run: Run, request: LaunchRequest) -> LaunchOutcome:
        if run.key != (request.scope_id, request.process_id):
            raise InvalidArgument(
                f"idempotency key {request.idempotency_key!r} was used for {run.process_id!r} "
                f"in scope {run.scope_id!r}; use a new key for another process"
            )
        record = self._record(run.scope_id, run.process_id) or ProcessRecord(run.scope_id, run.process_id)
        return LaunchOutcome(run.run_id, record, deduplicated=True)

    async def _resolve_record(self, request: LaunchRequest) -> ProcessRecord:
        """The record to launch, defining the scope from a worker when it is unknown."""
        record = self._record(request.scope_id, request.process_id)
        if record is not None:
            return record
        if request.definition is not None:
            info = request.definition
            return ProcessRecord(
                request.scope_id,
                request.process_id,
                name=info.name or request.process_id,
                detail_level=info.detail_level,
                warning=info.warning,
                special=info.special,
            )
        infos = await self._describe_scope(request.scope_id)
        if infos is None:
            # No worker to ask: accept the launch, a worker will judge it when one comes.
            return ProcessRecord(request.scope_id, request.process_id, name=request.process_id)
        await self._define(request.scope_id, infos, clean=False)
        record = self._record(request.scope_id, request.process_id)
        if record is None:
            known = ", ".join(sorted(info.process_id for info in infos)[:10]) or "none"
            raise NotFound(
                f"process {request.process_id!r} is not defined in scope {request.scope_id!r} "
                f"(known: {known})"
            )
        return record

    def _track_run(self, run: Run) -> None:
        self._runs[run.run_id] = run
        if run.idempotency_key:
            self._idempotency[run.idempotency_key] = run.run_id
        if run.parent_run_id:
            self._children.setdefault(run.parent_run_id, set()).add(run.run_id)

    def _forget_run(self, run: Run) -> None:
        self._runs.pop(run.run_id, None)
        self._preferred.pop(run.run_id, None)
        self._acked_at.pop(run.run_id, None)
        self._restored.discard(run.run_id)
        self._log_tails.pop(run.run_id, None)
        if run.idempotency_key and self._idempotency.get(run.idempotency_key) == run.run_id:
            # Memory holds the keys of active runs only; an ended run's key is
            # found in the store (its unique index), so memory stays bounded.
            del self._idempotency[run.idempotency_key]
        children = self._children.get(run.parent_run_id)
        if children is not None:
            children.discard(run.run_id)
            if not children:
                del self._children[run.parent_run_id]
        self._children.pop(run.run_id, None)

    def _dispatch_ready(self) -> None:
        """Hand every scheduled run that a worker can take now to that worker."""
        if not self._leading:
            return
        self._child_queue = self._dispatch_queue(self._child_queue, needs_slot=False)
        self._queue = self._dispatch_queue(self._queue, needs_slot=True)

    def _dispatch_queue(self, queue: deque[str], needs_slot: bool) -> deque[str]:
        passed_over: deque[str] = deque()  # no free worker serves their scope yet
        free = self.pool.free_slots() if needs_slot else 1
        while queue and free > 0:
            run_id = queue.popleft()
            run = self._runs.get(run_id)
            if run is None or run.state is not S.SCHEDULED:
                continue
            entry = self.pool.choose(run.scope_id, needs_slot, self._preferred.get(run_id, ""))
            if entry is None:
                passed_over.append(run_id)
                continue
            self.pool.assign(entry, run_id, needs_slot)
            free -= needs_slot
            self._spawn(self._dispatch(run, entry))
        # No slot left anywhere: the rest keeps its order, behind those passed
        # over, without a copy (every run's end comes here, however long the queue).
        queue.extendleft(reversed(passed_over))
        return queue

    async def _dispatch(self, run: Run, entry: WorkerEntry) -> None:
        record = self._record(run.scope_id, run.process_id)
        if record is None or record.run_id != run.run_id or record.state is not S.SCHEDULED:
            self.pool.release(entry.worker_id, run.run_id)
            return
        new_record, started = transitions.start(record, run, entry.worker_id, _now())
        change = self._stage(new_record)
        self._runs[run.run_id] = started
        try:
            await self._commit(change, started)
        except ShardsError as error:
            log.warning("could not record the start of run %s: %s", run.run_id, error)
            self.pool.release(entry.worker_id, run.run_id)
            if self._leading:
                self._runs[run.run_id] = run
                self._enqueue(run, front=True)
            return
        self._dispatcher.send(started, entry)

    def _executed(self, run: Run, entry: WorkerEntry, code: grpc.StatusCode | None, details: str) -> None:
        """What came of handing ``run`` to ``entry`` (``code`` None: its code started)."""
        if code is not None:
            self._spawn(self._dispatch_failed(run.run_id, entry, code, details))
            return
        self._acked_at[run.run_id] = time.monotonic()
        self._pass_on_stop(run.run_id)

    def _pass_on_stop(self, run_id: str) -> None:
        """A stop asked before the worker confirmed the run (being dispatched, or restored
        from a predecessor) was not sent: the worker has the run now, so send it."""
        current = self._runs.get(run_id)
        if current is not None and current.state is S.STOP_REQUESTED:
            self._spawn(self._signal_stop(current))

    async def _dispatch_failed(
        self, run_id: str, entry: WorkerEntry, code: grpc.StatusCode, details: str
    ) -> None:
        run = self._runs.get(run_id)
        if run is None or run.state.is_end:
            return
        reason = f"worker {entry.worker_id} refused the run: {code.name}: {details}"
        if (
            code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            and run.state is S.RUNNING
        ):
            # The code never started: give the run to another worker.
            entry.refused_until = time.monotonic() + 1.0
            record = self._require_record(run.scope_id, run.process_id)
            new_record, requeued = transitions.requeue(record, run)
            change = self._stage(new_record)
            self._runs[run_id] = requeued
            self.pool.release(entry.worker_id, run_id)
            await self._commit(change, requeued)
            self._enqueue(requeued, front=True)
            self._spawn(self._redispatch_later(1.0))
            return
        state = S.FAILED if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) else S.LOST
        await self._end_run(run, state, reason)

    async def _redispatch_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._dispatch_ready()

    # ------------------------------------------------------------ stop

    async def stop_process(self, scope_id: str, process_id: str) -> ProcessRecord:
        self.require_leader()
        record = self._require_record(scope_id, process_id)
        if not record.state.is_active:
            raise FailedPrecondition(
                f"process {process_id!r} in scope {scope_id!r} is not active (state: {record.state})"
            )
        run = self._runs.get(record.run_id)
        if run is None:
            raise FailedPrecondition(f"process {process_id!r} has no active run")
        await self._stop_run(run)
        return self._require_record(scope_id, process_id)

    async def _stop_run(self, run: Run) -> None:
        # Children first, so a parent waiting for them sees them stopped.
        for child_id in list(self._children.get(run.run_id, ())):
            child = self._runs.get(child_id)
            if child is not None and child.state.is_active:
                await self._stop_run(child)
        run = self._runs.get(run.run_id, run)
        if run.state is S.SCHEDULED:
            await self._end_run(run, S.STOPPED, "")
        elif run.state is S.RUNNING:
            record = self._require_record(run.scope_id, run.process_id)
            new_record, requested = transitions.request_stop(record, run)
            change = self._stage(new_record)
            self._runs[run.run_id] = requested
            await self._commit(change, requested)
            if self._leading and run.run_id in self._acked_at:
                self._spawn(self._signal_stop(requested))
        elif run.state in (S.STOP_REQUESTED, S.STOPPING) and run.run_id in self._acked_at:
            self._spawn(self._signal_stop(run))  # asked again: tell the worker again

    async def _signal_stop(self, run: Run) -> None:
        entry = self.pool.get(run.worker_id)
        if entry is None or not entry.alive:
            return  # the sweeper will mark it lost
        try:
            await entry.stub.StopRun(
                pb.StopRunRequest(run_id=run.run_id), timeout=self.config.dispatch_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "worker %s did not take the stop of run %s: %s", entry.worker_id, run.run_id, error.details()
            )
            return
        current = self._runs.get(run.run_id)
        if current is None or current.state is not S.STOP_REQUESTED:
            return  # it ended meanwhile
        record = self._require_record(current.scope_id, current.process_id)
        new_record, stopping = transitions.stopping(record, current)
        change = self._stage(new_record)
        self._runs[run.run_id] = stopping
        await self._commit(change, stopping)

    # ------------------------------------------------------------ the end of runs

    async def _end_run(
        self, run: Run, state: ProcessState, error: str, progress: Progress | None = None
    ) -> Run:
        record = self._require_record(run.scope_id, run.process_id)
        tail = self._log_tails.get(run.run_id)
        new_record, ended = transitions.end(record, run, state, _now(), error=error, progress=progress)
        if tail:
            ended = replace(ended, log_tail=tuple(tail))
        change = self._stage(new_record)
        self._runs[run.run_id] = ended
        await self._commit(change, ended)
        self._run_ended(ended)
        return ended

    def _run_ended(self, run: Run) -> None:
        self.pool.release(run.worker_id, run.run_id)
        self._forget_run(run)
        for waiter in self._waiters.pop(run.run_id, []):
            if not waiter.done():
                waiter.set_result(run)
        self._dispatch_ready()

    async def run_worker(self, run_id: str) -> str | None:
        """The worker a run was given to ("" if none yet); None if there is no such run.

        Answers from the working view without waiting for writes in flight: a
        worker learns of a run only once its start is persisted, so this only
        ever confirms what the store already has.
        """
        run = self._runs.get(run_id)
        if run is None:
            run = await self._from_store(self.store.get_run(run_id))
        return run.worker_id if run is not None else None

    async def finish_runs(self, worker_id: str, ends: Sequence[RunEndReport]) -> None:
        """A worker reports the ends of runs, taken or refused whole.

        Idempotent: an end already recorded (a retry, or a run marked lost
        meanwhile) is accepted and ignored. The ends are staged together, so
        they reach the store in one write.
        """
        self.require_leader()
        for end in ends:
            if end.state not in (S.DONE, S.FAILED, S.STOPPED):
                raise InvalidArgument(f"a run ends done, failed or stopped, not {end.state}")
            run = self._runs.get(end.run_id)
            if run is None:
                stored = await self._from_store(self.store.get_run(end.run_id))
                if stored is None:
                    raise NotFound(f"run {end.run_id!r} does not exist")
                if stored.worker_id != worker_id:
                    raise FailedPrecondition(f"run {end.run_id!r} is not assigned to worker {worker_id!r}")
                continue
            if run.worker_id != worker_id:
                raise FailedPrecondition(f"run {end.run_id!r} is not assigned to worker {worker_id!r}")
            if run.state is S.SCHEDULED:
                raise FailedPrecondition(f"run {end.run_id!r} has not started")
        # Checked whole; now applied (a run that ended while the store was read is skipped).
        endings = []
        for end in ends:
            run = self._runs.get(end.run_id)
            if run is None or run.worker_id != worker_id or run.state.is_end:
                continue
            self._append_logs(end.run_id, end.log_lines)
            endings.append(self._end_run(run, end.state, end.error, end.progress))
        await asyncio.gather(*endings)

    def _append_logs(self, run_id: str, lines: Iterable[str]) -> None:
        tail = self._log_tails.get(run_id)
        for line in lines:
            if tail is None:
                tail = self._log_tails[run_id] = deque(maxlen=LOG_TAIL_LINES)
            tail.append(line[:MAX_LOG_LINE_LENGTH])

    # ------------------------------------------------------------ workers

    async def register_worker(
        self,
        worker_id: str,
        address: str,
        capacity: int,
        scopes: tuple[str, ...],
        running: set[str],
        incarnation: str = "",
    ) -> None:
        self.require_leader()
        entry, previous = self.pool.register(worker_id, address, capacity, scopes, incarnation)
        await self.store.save_worker(entry.info(), self.term)
        log.info("worker %s registered at %s (capacity %d)", worker_id, address, entry.capacity)
        if previous is not None and previous.incarnation != incarnation:
            # The same id, another process: whatever the old one ran is gone.
            await self._lose_runs(entry, f"worker {worker_id} restarted while running it")
        else:
            await self._reconcile(entry, running)
        self._dispatch_ready()

    async def heartbeat(self, worker_id: str, incarnation: str, running: set[str]) -> bool:
        """False when the worker must register (again)."""
        self.require_leader()
        entry = self.pool.heartbeat(worker_id, incarnation)
        if entry is None:
            return False
        await self._reconcile(entry, running)
        return True

    async def _reconcile(self, entry: WorkerEntry, running: set[str]) -> None:
        """Settle the runs this worker should have but does not list.

        A worker lists every run it received until its end is acknowledged, so
        a run it does not list never reached it: a run restored from a
        predecessor goes back to the queue (its launch was acknowledged and must
        run once). A run we handed over ourselves is judged only once its
        confirmation is older than the report's possible age; then it is lost.
        """
        confirmed_before = time.monotonic() - 2 * self.config.heartbeat_interval_s
        for run_id in list(entry.runs):
            run = self._runs.get(run_id)
            if run_id in running or run is None or not run.state.is_active:
                if run_id in running:
                    self._restored.discard(run_id)
                    if run_id not in self._acked_at:
                        self._acked_at[run_id] = time.monotonic()
                        self._pass_on_stop(run_id)
                continue
            if run_id in self._restored:
                await self._requeue_unreached(run, entry)
                continue
            acked = self._acked_at.get(run_id)
            if acked is None or acked > confirmed_before:
                continue  # not confirmed yet, or too recently to be in this report
            await self._end_run(run, S.LOST, f"worker {entry.worker_id} no longer runs it")

    async def _requeue_unreached(self, run: Run, entry: WorkerEntry) -> None:
        self._restored.discard(run.run_id)
        self.pool.release(entry.worker_id, run.run_id)
        if run.state is not S.RUNNING:  # a stop was asked for a run that never started
            await self._end_run(run, S.STOPPED, "")
            return
        record = self._require_record(run.scope_id, run.process_id)
        new_record, requeued = transitions.requeue(record, run)
        change = self._stage(new_record)
        self._runs[run.run_id] = requeued
        await self._commit(change, requeued)
        log.info("run %s never reached worker %s; dispatching it again", run.run_id, entry.worker_id)
        self._enqueue(requeued, front=True)

    async def _lose_runs(self, entry: WorkerEntry, reason: str) -> None:
        for run_id in list(entry.runs):
            run = self._runs.get(run_id)
            if run is not None and run.state.is_active and run.state is not S.SCHEDULED:
                try:
                    await self._end_run(run, S.LOST, reason)
                except ShardsError as error:
                    log.warning("could not mark run %s lost: %s", run_id, error)

    def push_events(self, worker_id: str, events: Iterable[pb.RunEvent]) -> int:
        """Progress and log lines from a worker; returns how many events were refused."""
        self.require_leader()
        refused = 0
        for event in events:
            run = self._runs.get(event.run_id)
            if run is None or run.worker_id != worker_id:
                refused += 1
                continue
            self._append_logs(event.run_id, event.log_lines)
            if not event.HasField("progress"):
                continue
            rate = event.progress.rate
            if not 0.0 <= rate <= 1.0:
                refused += 1
                continue
            progress = Progress(event.progress.message[:4096], rate)
            record = self._record(run.scope_id, run.process_id)
            if record is None or record.run_id != run.run_id or record.progress == progress:
                continue
            self._runs[run.run_id] = replace(run, progress=progress)
            self.committer.progress(
                self._stage(transitions.report_progress(record, progress), state_change=False)
            )
        return refused

    async def _oldest_journaled(self) -> int:
        oldest = await self.store.journal_since(0, 1)
        return oldest[0].revision if oldest else 0

    async def _prune_journal_loop(self) -> None:
        """Keep the store's journal bounded; a resume from before it becomes a RESET."""
        while True:
            await asyncio.sleep(self.config.journal_prune_interval_s)
            try:
                await self.store.prune_journal(self.config.journal_keep)
                self._journal_floor = await self._oldest_journaled() - 1
            except Exception as error:  # the next round tries again
                log.warning("pruning the journal failed: %s", error)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            for entry in self.pool.expire():
                log.warning("worker %s stopped heartbeating; its runs are lost", entry.worker_id)
                await self._lose_runs(
                    entry,
                    f"worker {entry.worker_id} stopped heartbeating "
                    f"(silent for over {self.config.worker_timeout_s:g}s)",
                )
                self.pool.forget(entry.worker_id)
                await entry.channel.close(None)
            self._dispatch_ready()

    # ------------------------------------------------------------ watch

    async def watch(self, process_filter: ProcessFilter, from_revision: int) -> AsyncIterator[WatchEvent]:
        """The records of a scope, then every change; resumable from a revision.

        The watcher subscribes before anything is read, so a change published
        while the snapshot or replay is sent waits in its buffer; ``cut`` (the
        revision the snapshot or replay goes up to) keeps it from being sent twice.
        """
        self.require_leader()
        watcher = self.hub.subscribe(process_filter)
        try:
            if from_revision > self._committed_revision or 0 < from_revision < self._journal_floor:
                # From a future we never had (another store?), or from before
                # what the journal still keeps: start over.
                from_revision = -1
            replay = self.hub.changes_since(from_revision) if from_revision > 0 else None
            if replay is not None:
                cut = self._committed_revision
                events = [c.to_event() for c in replay if c.revision <= cut and watcher.wants(c)]
            elif from_revision > 0:
                events, cut = await self._replay_from_journal(process_filter, from_revision)
            else:
                records, cut = self.list_processes(process_filter)
                events = [WatchEvent(WatchEventType.SNAPSHOT, r.revision, r) for r in records]
                if from_revision < 0:
                    events.insert(0, WatchEvent(WatchEventType.RESET, cut))
            for event in events:
                yield event
            yield WatchEvent(WatchEventType.SYNCED, cut)
            while True:
                try:
                    batch = await watcher.next_batch()
                except WatcherOverflow as overflow:
                    limit = self.config.watcher_max_pending_states
                    raise ResourceExhausted(
                        f"watcher fell more than {limit} state changes behind; "
                        f"resume from revision {max(overflow.resume_revision, cut)}"
                    ) from None
                except WatcherClosed:
                    raise WatchClosed(
                        "this controller stopped leading; resume the watch on the leader"
                    ) from None
                for change in batch:
                    if change.revision <= cut:
                        continue
                    watcher.delivered(change.revision)
                    yield change.to_event()
        finally:
            self.hub.unsubscribe(watcher)

    async def _replay_from_journal(
        self, process_filter: ProcessFilter, from_revision: int
    ) -> tuple[list[WatchEvent], int]:
        """Changes after ``from_revision`` from the store's journal (older than the in-memory log).

        The journal has every state change; progress-only changes are not
        journaled, so a record whose newest revision is a progress change is
        sent as it is now.
        """
        cut = self._committed_revision
        entries = await self._from_store(self.store.journal_since(from_revision, limit=10_000_000))
        found: list[tuple[int, WatchEvent]] = []
        journaled: set[int] = set()
        for entry in entries:
            if entry.revision > cut or entry.scope_id != process_filter.scope_id:
                continue
            journaled.add(entry.revision)
            change = Change(entry.revision, entry.scope_id, entry.process_id, entry.record, True)
            if change.record is None or process_filter.matches(change.record):
                found.append((entry.revision, change.to_event()))
        for record in self._committed.get(process_filter.scope_id, {}).values():
            newer = from_revision < record.revision <= cut and record.revision not in journaled
            if newer and process_filter.matches(record):
                found.append((record.revision, WatchEvent(WatchEventType.CHANGED, record.revision, record)))
        found.sort(key=lambda item: item[0])
        return [event for _, event in found], cut
