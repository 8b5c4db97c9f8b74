"""Stopping a process: its children first, then the run itself.

A scheduled run ends stopped at once. A running one is marked
``stop_requested`` (committed), then its worker is told (``StopRun``), and
once it took the stop the run is ``stopping`` until its worker reports the
end. A worker that has not confirmed a run yet is told when it does
(``pass_on_stop``). A worker that did not take the stop (a call that failed or
timed out) is asked again, less and less often, while the run is still
``stop_requested`` on it and it is alive: a stop is never dropped on the way.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc

from shards._logging import of_run
from shards.errors import FailedPrecondition, ShardsError
from shards.models import ProcessRecord, Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.ends import Ends
from shards_controller.state import State
from shards_controller.workers import WorkerPool

log = logging.getLogger(__name__)
S = ProcessState

# A stop the worker did not take is asked again after this long, doubled each time up to the most.
STOP_RETRY_FIRST_S = 0.5
STOP_RETRY_MOST_S = 10.0


class Stops:
    def __init__(self, state: State, active: ActiveRuns, pool: WorkerPool, ends: Ends) -> None:
        self._state = state
        self._active = active
        self._pool = pool
        self._ends = ends

    async def stop_process(
        self, scope_id: str, process_id: str, stop_grace_s: float | None = None
    ) -> ProcessRecord:
        """Stop a process; ``stop_grace_s`` (else its definition's) before the stop is forced."""
        state = self._state
        state.require_leader()
        record = state.require_record(scope_id, process_id)
        if not record.state.is_active and record.next_attempt_at is not None:
            # Between attempts: the stop cancels the ones still to come.
            change = state.stage(transitions.cancel_retry(record))
            await state.commit(change)
            return state.require_record(scope_id, process_id)
        if not record.state.is_active:
            raise FailedPrecondition(
                f"process {process_id!r} in scope {scope_id!r} is not active (state: {record.state})"
            )
        run = self._active.get(record.run_id)
        if run is None:
            raise FailedPrecondition(f"process {process_id!r} has no active run")
        await self._stop_run(run, stop_grace_s)
        return state.require_record(scope_id, process_id)

    async def stop_run(self, run: Run, stop_grace_s: float | None = None) -> None:
        """Stop one active run (and its children), as a user's stop does."""
        await self._stop_run(run, stop_grace_s)

    async def _stop_run(self, run: Run, stop_grace_s: float | None = None) -> None:
        state, active = self._state, self._active
        # Children first, so a parent waiting for them sees them stopped.
        for child_id in list(active.children.get(run.run_id, ())):
            child = active.get(child_id)
            if child is not None and child.state.is_active:
                await self._stop_run(child)
        run = active.runs.get(run.run_id, run)
        if run.state is S.SCHEDULED:
            await self._ends.end_run(run, S.STOPPED, "")
        elif run.state is S.RUNNING:
            record = state.require_record(run.scope_id, run.process_id)
            new_record, requested = transitions.request_stop(record, run)
            change = state.stage(new_record)
            active.runs[run.run_id] = requested
            await state.commit(change, requested)
            if state.leading and run.run_id in active.acked_at:
                state.spawn(self._signal_stop(requested, stop_grace_s))
        elif run.state in (S.STOP_REQUESTED, S.STOPPING) and run.run_id in active.acked_at:
            state.spawn(self._signal_stop(run, stop_grace_s))  # asked again: tell the worker again

    async def _cancel_retrying_children(self, run: Run) -> None:
        """A parent that took its stop gets no more attempts of its children: the planned ones go.

        Only once its worker has the stop: its code, told that its child's last
        attempt failed, then knows it is being stopped, and ends stopped (as when
        the child was running and stopped). A parent that never takes its stop
        ends anyway, and the plan goes when its attempt finds no parent running.
        """
        state = self._state
        for key in sorted(self._active.retrying_children.pop(run.run_id, ())):
            record = state.record(*key)
            if record is None or record.parent_run_id != run.run_id or record.next_attempt_at is None:
                continue
            if record.state.is_active:
                continue
            try:
                await state.commit(state.stage(transitions.cancel_retry(record)))
            except ShardsError as error:
                log.warning("could not cancel the next attempt of %s/%s: %s", *key, error)

    def pass_on_stop(self, run_id: str) -> None:
        """A stop asked before the worker confirmed the run (being dispatched, or restored
        from a predecessor) was not sent: the worker has the run now, so send it."""
        current = self._active.get(run_id)
        if current is not None and current.state is S.STOP_REQUESTED:
            self._state.spawn(self._signal_stop(current))

    async def _signal_stop(self, run: Run, stop_grace_s: float | None = None) -> None:
        state, active = self._state, self._active
        request = pb.StopRunRequest(run_id=run.run_id)
        if stop_grace_s is not None:
            request.stop_grace.FromTimedelta(timedelta(seconds=stop_grace_s))
        retry_s = STOP_RETRY_FIRST_S
        while True:
            entry = self._pool.get(run.worker_id)
            if entry is None or not entry.alive:
                return  # the sweeper will mark it lost
            try:
                await entry.stub.StopRun(request, timeout=state.config.dispatch_timeout_s)
                break
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "worker %s did not take the stop of run %s (%s: %s); asking again in %g s",
                    entry.worker_id,
                    run.run_id,
                    error.code().name,
                    error.details(),
                    retry_s,
                    extra=of_run(run),
                )
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, STOP_RETRY_MOST_S)
            current = active.get(run.run_id)
            if not state.leading or current is None or current.state is not S.STOP_REQUESTED:
                return  # it ended, its worker took a stop asked again, or this controller stepped down
        await self._cancel_retrying_children(run)
        current = active.get(run.run_id)
        if current is None or current.state is not S.STOP_REQUESTED:
            return  # it ended meanwhile
        record = state.require_record(current.scope_id, current.process_id)
        new_record, stopping = transitions.stopping(record, current)
        change = state.stage(new_record)
        active.runs[run.run_id] = stopping
        await state.commit(change, stopping)
