"""Launching a process: check, stage ``scheduled`` and a new run, commit, then hand it on.

A free worker's start goes in the same write as the launch (one round trip
to the store before the code starts); otherwise the run waits in the queue.
An idempotency key makes a retried launch answer with the first one's run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shards.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shards.models import ProcessInfo, ProcessRecord, Run
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.catalog import Catalog
from shards_controller.fast_replace import replace
from shards_controller.run_queue import RunQueue
from shards_controller.runs import Runs
from shards_controller.state import State, new_run_id, now
from shards_controller.watch import Change
from shards_controller.workers import WorkerPool

S = ProcessState


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    scope_id: str
    process_id: str
    idempotency_key: str = ""
    new_key: bool = False  # the caller vouches that no earlier launch sent this key
    parent_run_id: str = ""
    definition: ProcessInfo | None = None
    preferred_worker_id: str = ""
    timeout_s: float | None = None  # instead of the definition's
    attempt: int = 1  # 2... when the controller retries
    fire_at: datetime | None = None  # the schedule's fire time this launch is for
    fire_skips: int = 0  # earlier fire times its run catches up
    fire_missed: int = 0  # fire times missed past the catch-up window


@dataclass(frozen=True, slots=True)
class LaunchOutcome:
    run_id: str
    process: ProcessRecord
    deduplicated: bool


class Launcher:
    def __init__(
        self,
        state: State,
        active: ActiveRuns,
        pool: WorkerPool,
        queue: RunQueue,
        catalog: Catalog,
        runs: Runs,
    ) -> None:
        self._state = state
        self._active = active
        self._pool = pool
        self._queue = queue
        self._catalog = catalog
        self._runs = runs

    async def launch(self, request: LaunchRequest) -> LaunchOutcome:
        state, active = self._state, self._active
        state.require_leader()
        key = request.idempotency_key
        # A key its client made for this launch cannot be stored yet: on a remote
        # store its lookup would be a round trip for nothing.
        vouched_new = request.new_key and state.store.remote_lookups
        if key and not vouched_new:
            previous = await self._find_idempotent(key)
            if previous is not None:
                outcome = self._deduplicated(previous, request)
                await state.committed_view()
                return outcome
        base = await self._resolve_record(request)
        # Everything below is synchronous: no other request can interleave. A
        # key in memory belongs to an active run (ended runs' keys are in the store).
        if key and key in active.idempotency:
            outcome = self._deduplicated(active.runs[active.idempotency[key]], request)
            await state.committed_view()
            return outcome
        record = state.record(request.scope_id, request.process_id) or base
        if record.state.is_active:
            raise FailedPrecondition(
                f"process {request.process_id!r} in scope {request.scope_id!r} is already {record.state} "
                f"(run {record.run_id}); stop it or wait for it to end before launching it again"
            )
        if request.parent_run_id:
            parent = active.get(request.parent_run_id)
            if parent is None or parent.state is not S.RUNNING:
                raise FailedPrecondition(f"parent run {request.parent_run_id!r} is not running")
        run = Run(
            run_id=new_run_id(),
            scope_id=request.scope_id,
            process_id=request.process_id,
            state=S.SCHEDULED,
            parent_run_id=request.parent_run_id,
            idempotency_key=key,
            created_at=now(),
            timeout_s=request.timeout_s if request.timeout_s is not None else record.timeout_s,
            attempt=request.attempt,
        )
        if request.fire_at is not None:  # the fire and its launch: one write
            record = replace(
                record,
                schedule_last_fire_at=request.fire_at,
                schedule_last_outcome=f"launched run {run.run_id}",
                schedule_fires=record.schedule_fires + 1,
                schedule_skips=record.schedule_skips + request.fire_skips,
                schedule_missed=record.schedule_missed + request.fire_missed,
            )
        change = state.stage(transitions.schedule(record, run))
        assert change.record is not None
        active.track(run)
        if request.preferred_worker_id:
            active.preferred[run.run_id] = request.preferred_worker_id
        changes: list[tuple[Change, Run | None]] = [(change, run)]
        # A free worker now: its start goes in the same write as the launch
        # (one round trip to the store instead of two before the code starts).
        entry = self._queue.reserve_now(run)
        if entry is not None:
            new_record, started = transitions.start(change.record, run, entry.worker_id, now())
            changes.append((state.stage(new_record), started))
            active.runs[run.run_id] = started
        term = state.term
        try:
            await state.commit_all(changes)
        except BaseException:
            if entry is not None:
                self._pool.release(entry.worker_id, run.run_id)
            active.forget(run)
            raise
        outcome = LaunchOutcome(run.run_id, change.record, deduplicated=False)
        if not state.leading or state.term != term:
            # Persisted as this controller stepped down (its last write went
            # through): the next leader restores the run and hands it to a worker.
            return outcome
        if entry is not None:
            self._runs.send(active.runs[run.run_id], entry)
        else:
            self._queue.enqueue(run)
            self._runs.dispatch_ready()
        return outcome

    async def _find_idempotent(self, key: str) -> Run | None:
        active = self._active
        run_id = active.idempotency.get(key)
        if run_id is not None and run_id in active.runs:
            return active.runs[run_id]
        return await self._state.from_store(self._state.store.find_run_by_idempotency_key(key))

    def _deduplicated(self, run: Run, request: LaunchRequest) -> LaunchOutcome:
        if run.key != (request.scope_id, request.process_id):
            raise InvalidArgument(
                f"idempotency key {request.idempotency_key!r} was used for {run.process_id!r} "
                f"in scope {run.scope_id!r}; use a new key for another process"
            )
        record = self._state.record(run.scope_id, run.process_id)
        record = record or ProcessRecord(run.scope_id, run.process_id)
        return LaunchOutcome(run.run_id, record, deduplicated=True)

    async def _resolve_record(self, request: LaunchRequest) -> ProcessRecord:
        """The record to launch, defining the scope from a worker when it is unknown."""
        state = self._state
        record = state.record(request.scope_id, request.process_id)
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
                timeout_s=info.timeout_s,
                retry=info.retry,
            )
        # Not a process the catalog has (or not yet defined): ask a worker, and
        # refuse the launch rather than accept one that can only fail later.
        # describe_scope says why when the catalog cannot be known.
        defined = bool(state.working.get(request.scope_id))
        try:
            infos = await self._catalog.describe_scope(request.scope_id)
        except (FailedPrecondition, Unavailable) as unknown:
            if not defined:
                raise
            # No worker could be asked again: the catalog the scope was last defined with decides.
            known = sorted(state.working.get(request.scope_id, {}))
            raise self._not_found(request, known, f"; as last defined ({unknown.message})") from None
        await self._catalog.define(request.scope_id, infos, clean=False)
        record = state.record(request.scope_id, request.process_id)
        if record is None:
            raise self._not_found(request, sorted(info.process_id for info in infos), "")
        return record

    @staticmethod
    def _not_found(request: LaunchRequest, known: list[str], basis: str) -> NotFound:
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "") if known else "none"
        return NotFound(
            f"process {request.process_id!r} is not defined in scope {request.scope_id!r} "
            f"(known: {listed}{basis}); nothing was launched"
        )
