"""Taking over as the leader of a term, and stepping down.

Taking over loads the store into memory, repairs what a predecessor left half
written, restores the active runs (each worker's next heartbeat tells whether
it still has its runs: ``fleet``), starts the committer and the leader's
loops, then dispatches what is scheduled. Stepping down stops all of it and
forgets everything: a standby keeps nothing in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from shards._aio import cancel_and_wait
from shards._logging import of_run
from shards._memory import give_back_free_memory
from shards.models import ProcessRecord, Run, WorkerInfo
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.commit import Committer
from shards_controller.errors import NotLeader
from shards_controller.fleet import Fleet
from shards_controller.run_queue import RunQueue
from shards_controller.runs import Runs
from shards_controller.state import State, now
from shards_controller.store import StaleTerm, WriteBatch
from shards_controller.watch import Change
from shards_controller.watching import Watching
from shards_controller.workers import WorkerPool

log = logging.getLogger(__name__)
S = ProcessState

# A new leader numbers its changes from the highest stored revision plus this:
# revisions its predecessor published but never persisted (progress, written
# behind) stay below it, so a watcher resuming from one is replayed from the
# journal instead of being reset.
REVISION_GAP = 1_000_000


class TakeOver:
    def __init__(
        self,
        state: State,
        active: ActiveRuns,
        pool: WorkerPool,
        queue: RunQueue,
        runs: Runs,
        fleet: Fleet,
        watching: Watching,
    ) -> None:
        self._state = state
        self._active = active
        self._pool = pool
        self._queue = queue
        self._runs = runs
        self._fleet = fleet
        self._watching = watching
        # Told of every change of leadership, however it came (the health service listens).
        self.on_leadership_change: Callable[[bool], Awaitable[None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Told once the take-over has restored the active runs (before any is dispatched).
        self.restored: Callable[[], None] = lambda: None
        # The active runs' logs: restored once the runs are (before anyone is served),
        # stored on a clean step-down (before the committer's last write), forgotten with the rest.
        self.restore_logs: Callable[[list[str]], Awaitable[None]] = _nothing
        self.store_logs: Callable[[], Awaitable[None]] = _nothing
        self.forget_logs: Callable[[], None] = lambda: None
        # More loops that run while leading (schedules), started with the sweep, stopped with it.
        self.loops: list[Callable[[], Coroutine[Any, Any, None]]] = []
        # Taking over and stepping down, one at a time: both await the store,
        # and a step-down spawned by a stale write must neither interleave with
        # a take-over nor end the leadership that follows its own.
        self._transition = asyncio.Lock()

    def _reset_memory(self) -> None:
        self._state.reset()
        self._active.reset()
        self._queue.reset()
        self.forget_logs()

    async def become_leader(self, term: int) -> None:
        """Load the store and start serving as the leader of ``term``."""
        async with self._transition:
            if self._state.leading:
                return
            try:
                await self._take_over(term)
            except BaseException:
                await self._abandon_take_over()
                raise

    async def _abandon_take_over(self) -> None:
        """A take-over that failed or was cancelled leaves nothing running."""
        state = self._state
        committer, state.committer_or_none = state.committer_or_none, None
        if committer is not None:
            await committer.abandon()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self._reset_memory()

    async def _take_over(self, term: int) -> None:
        began = time.monotonic()
        state = self._state
        store = state.store
        self._reset_memory()
        state.term = term
        # Independent reads, at once: on a remote store each is a round trip or more.
        records, stored_revision, journal_floor, workers, active = await asyncio.gather(
            store.load_records(),
            store.max_revision(),
            store.journal_floor(),
            store.load_workers(),
            store.load_active_runs(),
        )
        for record in records:
            state.set_working(record)
            state.committed.setdefault(record.scope_id, {})[record.process_id] = record
        state.revision = state.committed_revision = stored_revision + (REVISION_GAP if stored_revision else 0)
        state.hub.reset(state.revision)
        state.journal_floor = journal_floor
        for worker in workers:
            # Alive until silent for twice the timeout: first it must find us.
            self._pool.restore(worker, grace_s=state.config.worker_timeout_s)
        repairs = await self._restore_runs(records, active)
        await self.restore_logs(list(self._active.runs))
        state.committer_or_none = Committer(
            store,
            term,
            state.publish,
            state.commit_failed,
            state.config.progress_flush_interval_s,
            state.metrics,
        )
        state.committer_or_none.start()
        if repairs:
            await state.committer.commit(repairs)
        state.leading = True
        state.leader_address = state.config.address
        self._tasks = [
            asyncio.create_task(self._fleet.sweep_loop(), name="sweeper"),
            asyncio.create_task(self._watching.prune_journal_loop(), name="journal-pruner"),
            *(asyncio.create_task(loop()) for loop in self.loops),
        ]
        state.metrics.takeovers += 1
        loaded = len(records)
        del records, active
        give_back_free_memory()  # what the load decoded on the way (see shards._memory)
        if self.on_leadership_change is not None:
            await self.on_leadership_change(True)
        log.info(
            "leading (term %d): %d records, %d active runs, revision %d; took over in %.2f s",
            term,
            loaded,
            len(self._active.runs),
            state.revision,
            time.monotonic() - began,
        )
        self.restored()
        self._runs.dispatch_ready()

    async def _restore_runs(
        self, records: list[ProcessRecord], active: list[Run]
    ) -> list[tuple[Change, Run | None]]:
        """Take over the active runs (``active``: the store's); returns the repairs to commit.

        A batch is not atomic on MongoDB: a predecessor killed while writing
        one may leave a run ahead of its record or behind it. The record holds
        what was acknowledged, so the run is aligned to it (rebuilt from it
        when it is missing); a run whose record never took it is a launch that
        was never acknowledged, and is completed (its client retries with the
        same key, which the run carries).
        """
        state, store = self._state, self._state.store
        stored = {run.run_id: run for run in active}
        repairs: list[tuple[Change, Run | None]] = []
        restored: list[Run] = []
        for record in records:
            if not record.state.is_active:
                continue
            run = stored.pop(record.run_id, None) or await store.get_run(record.run_id)
            if run is None:
                # Its record was written and the run was not (a torn batch on MongoDB):
                # rebuilt from the record, which holds what was acknowledged.
                log.warning(
                    "record %s/%s names run %s, which is not stored: rebuilt",
                    *record.key,
                    record.run_id,
                    extra=of_run(record),
                )
                run = _run_from_record(record)
                repairs.append((state.stage(record), run))
                restored.append(run)
                continue
            if run.state is not record.state or run.worker_id != record.worker_id:
                run = replace(
                    run,
                    state=record.state,
                    worker_id=record.worker_id,
                    started_at=record.running_since,
                    ended_at=None,
                )
                repairs.append((state.stage(record), run))
            restored.append(run)
        superseded: list[Run] = []
        for run in stored.values():
            current = state.record(run.scope_id, run.process_id)
            if current is not None and current.state.is_active:
                superseded.append(
                    replace(run, state=S.FAILED, error="superseded by another launch", ended_at=now())
                )
                continue
            record = current or ProcessRecord(run.scope_id, run.process_id, name=run.process_id)
            run = replace(run, state=S.SCHEDULED, worker_id="", started_at=None)
            repairs.append((state.stage(transitions.schedule(record, run)), run))
            restored.append(run)
        if superseded:
            await store.write(WriteBatch(runs=superseded), state.term)
        for run in sorted(restored, key=lambda r: r.created_at or now()):
            self._active.track(run)
            if run.state is S.SCHEDULED:
                self._queue.enqueue(run)
                continue
            entry = self._pool.get(run.worker_id)
            if entry is None:
                entry = self._pool.restore(WorkerInfo(run.worker_id, address="unknown:0"))
                entry.last_seen = 0.0  # never heard of: expires at the first sweep
            self._pool.assign(entry, run.run_id, needs_slot=not run.parent_run_id)
            self._active.restored.add(run.run_id)  # the worker's next heartbeat tells whether it has it
        return repairs

    async def step_down(self, leader_address: str = "", *, term: int | None = None) -> None:
        """Stop serving: another controller leads now (or we are shutting down).

        With ``term``, only if this controller still leads that term.
        """
        async with self._transition:
            if not self._state.leading or (term is not None and term != self._state.term):
                return
            await self._step_down(leader_address)

    async def _step_down(self, leader_address: str) -> None:
        state = self._state
        state.leading = False
        state.leader_address = leader_address
        self._runs.dispatcher.close()
        await cancel_and_wait([*self._tasks, *state.background])
        self._tasks = []
        state.background = set()
        # The last writes are bounded: a store that stopped answering (FerretDB
        # swamped, a lost network) kept a lone controller inside its step-down,
        # so it never took the lease again, for minutes. What they did not write
        # was never acknowledged; the next leader reconciles with the workers.
        budget_s = state.config.lease_ttl_s
        try:
            async with asyncio.timeout(budget_s):
                await self.store_logs()
        except Exception as error:
            log.warning("storing the run logs on stepping down failed: %s", _said(error, budget_s))
        if state.committer_or_none is not None:
            committer = state.committer_or_none
            try:
                async with asyncio.timeout(budget_s):
                    await committer.stop()
            except (StaleTerm, Exception) as error:
                log.warning("final write on stepping down failed: %s", _said(error, budget_s))
                await committer.abandon("this controller stopped leading before the store answered")
            state.committer_or_none = None
        state.hub.close_all()
        self._active.fail_waiters(lambda: NotLeader(leader_address))
        await self._pool.close()
        self._reset_memory()
        if self.on_leadership_change is not None:
            await self.on_leadership_change(False)
        log.info("stepped down (leader now: %s)", leader_address or "unknown")


def _said(error: BaseException, budget_s: float) -> str:
    return str(error) or f"no answer from the store within {budget_s:g} s"


async def _nothing(*_: Any) -> None:
    return None


def _run_from_record(record: ProcessRecord) -> Run:
    """The run an active record names, as far as the record tells (its key is not in it)."""
    return Run(
        run_id=record.run_id,
        scope_id=record.scope_id,
        process_id=record.process_id,
        state=record.state,
        worker_id=record.worker_id,
        parent_run_id=record.parent_run_id,
        created_at=record.running_since or now(),
        started_at=record.running_since,
    )
