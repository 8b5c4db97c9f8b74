"""The workers over time: registration, heartbeats, what each still runs, the sweep of silent ones.

A heartbeat lists the runs its worker has; ``_reconcile`` settles the runs the
leader thinks it has but it does not list. The sweep marks the runs of a
worker gone silent lost. ``workers.WorkerPool`` is the roster this changes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shards._logging import of_run
from shards.errors import AlreadyExists
from shards.models import Run
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.ends import Ends
from shards_controller.metrics import LOST_RESTARTED, LOST_SILENT, LOST_UNLISTED
from shards_controller.run_queue import RunQueue
from shards_controller.runs import Runs
from shards_controller.state import State
from shards_controller.stops import Stops
from shards_controller.workers import WorkerEntry, WorkerPool

log = logging.getLogger(__name__)
S = ProcessState


class Fleet:
    def __init__(
        self,
        state: State,
        active: ActiveRuns,
        pool: WorkerPool,
        queue: RunQueue,
        ends: Ends,
        stops: Stops,
        runs: Runs,
    ) -> None:
        self._state = state
        self._active = active
        self._pool = pool
        self._queue = queue
        self._ends = ends
        self._stops = stops
        self._runs = runs

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
        state = self._state
        state.require_leader()
        await self._refuse_a_twin(worker_id, address, incarnation)
        entry, previous = self._pool.register(worker_id, address, capacity, scopes, incarnation, worker_key)
        await state.store.save_worker(entry.info(), state.term)
        log.info("worker %s registered at %s (capacity %d)", worker_id, address, entry.capacity)
        if previous is not None and previous.incarnation != incarnation:
            # The same id, another process: whatever the old one ran is gone.
            await self._ends.lose_runs(
                entry, f"worker {worker_id} restarted while running it", LOST_RESTARTED
            )
        else:
            await self._reconcile(entry, running, runs_received)
        self._runs.dispatch_ready()

    async def _refuse_a_twin(self, worker_id: str, address: str, incarnation: str) -> None:
        """AlreadyExists if another live worker process holds this id.

        Two workers started with the same id would otherwise replace each other
        at every registration, and each time the runs of the other would be lost.
        One that comes back after a crash (another incarnation) is let in: at its
        old address, or when nothing answers at the old one's address any more.
        """
        previous = self._pool.get(worker_id)
        if (
            previous is None
            or not previous.alive
            or previous.incarnation == incarnation
            or previous.address == address
            or not await self._pool.answers(previous)
        ):
            return
        log.warning(
            "refused worker %s at %s: a live worker with that id runs at %s",
            worker_id,
            address,
            previous.address,
        )
        raise AlreadyExists(
            f"worker id {worker_id!r} is taken by a live worker at {previous.address}: "
            "give this worker another --worker-id (or stop that one first)"
        )

    async def heartbeat(
        self, worker_id: str, incarnation: str, running: set[str], runs_received: int | None = None
    ) -> bool:
        """False when the worker must register (again)."""
        self._state.require_leader()
        entry = self._pool.heartbeat(worker_id, incarnation)
        if entry is None:
            return False
        await self._reconcile(entry, running, runs_received)
        return True

    async def _reconcile(self, entry: WorkerEntry, running: set[str], runs_received: int | None) -> None:
        """Settle the runs this worker should have but does not list.

        A worker lists every run it received until its end is acknowledged, so
        a run it does not list never reached it: a run restored from a
        predecessor goes back to the queue (its launch was acknowledged and must
        run once). A run we handed over ourselves is judged only once the report
        was made after the worker had it; then it is lost. The worker's count of
        runs received proves that, however late the report is read (a stalled
        loop reads a report made before the run arrived, but counting fewer);
        without a count, a confirmation older than the report's possible age does.
        """
        active = self._active
        confirmed_before = time.monotonic() - 2 * self._state.config.heartbeat_interval_s
        for run_id in list(entry.runs):
            run = active.get(run_id)
            if run_id in running or run is None or not run.state.is_active:
                if run_id in running:
                    active.restored.discard(run_id)
                    if run_id not in active.acked_at:
                        active.acked_at[run_id] = time.monotonic()
                        if runs_received is not None:
                            active.acked_seq[run_id] = runs_received
                        self._stops.pass_on_stop(run_id)
                continue
            if run_id in active.restored:
                await self._requeue_unreached(run, entry)
                continue
            acked = active.acked_at.get(run_id)
            if acked is None:
                continue  # not confirmed yet
            acked_seq = active.acked_seq.get(run_id)
            if runs_received is not None and acked_seq is not None:
                if runs_received < acked_seq:
                    continue  # made before the worker had it
            elif acked > confirmed_before:
                continue  # too recently to be in this report
            await self._ends.end_run(
                run, S.LOST, f"worker {entry.worker_id} no longer runs it", lost_cause=LOST_UNLISTED
            )

    async def _requeue_unreached(self, run: Run, entry: WorkerEntry) -> None:
        state, active = self._state, self._active
        active.restored.discard(run.run_id)
        self._pool.release(entry.worker_id, run.run_id)
        if run.state is not S.RUNNING:  # a stop was asked for a run that never started
            await self._ends.end_run(run, S.STOPPED, "")
            return
        record = state.require_record(run.scope_id, run.process_id)
        new_record, requeued = transitions.requeue(record, run)
        change = state.stage(new_record)
        active.runs[run.run_id] = requeued
        await state.commit(change, requeued)
        log.info(
            "run %s never reached worker %s; dispatching it again",
            run.run_id,
            entry.worker_id,
            extra=of_run(run),
        )
        self._queue.enqueue(requeued, front=True)

    async def sweep_loop(self) -> None:
        """Every ``sweep_interval_s``: the workers silent for too long are gone, and their runs lost."""
        swept_at = time.monotonic()
        while True:
            config = self._state.config
            await asyncio.sleep(config.sweep_interval_s)
            now = time.monotonic()
            late_s = now - swept_at - config.sweep_interval_s
            swept_at = now
            if late_s > config.heartbeat_interval_s / 2:
                # This loop was held up (a busy or paused controller): the
                # heartbeats that came meanwhile are still queued, unread. The
                # silence was ours, not the workers': they get that time back.
                self._pool.forgive(late_s)
                log.warning("the controller's loop was held up %.1f s; no worker is judged on it", late_s)
            for entry in self._pool.expire():
                # Runs that never reached it went back to the queue: only the ones it had end lost.
                log.warning(
                    "worker %s stopped heartbeating; its %d run(s) are lost", entry.worker_id, len(entry.runs)
                )
                self._state.metrics.workers_lost += 1
                await self._ends.lose_runs(
                    entry,
                    f"worker {entry.worker_id} stopped heartbeating "
                    f"(silent for over {config.worker_timeout_s:g}s)",
                    LOST_SILENT,
                )
                self._pool.forget(entry.worker_id)
                await entry.channel.close(None)
            self._runs.dispatch_ready()
