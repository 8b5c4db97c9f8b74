"""Starting runs: a scheduled run's start is committed, then the run goes to its worker.

``dispatch_ready`` takes every run the queue can place now, commits each one's
start (``running`` on its worker) and hands it to the ``Dispatcher``, which
streams it to the worker. What came of that comes back in ``_executed``: the
code started (a stop asked meanwhile is passed on), or the worker refused the
run, which then goes to another worker or ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from shards._logging import of_run
from shards.errors import ShardsError
from shards.models import Run
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.dispatch import Dispatcher
from shards_controller.ends import Ends
from shards_controller.metrics import LOST_UNREACHABLE, seconds_between
from shards_controller.run_queue import RunQueue
from shards_controller.state import State, now
from shards_controller.stops import Stops
from shards_controller.workers import WorkerEntry, WorkerPool

log = logging.getLogger(__name__)
S = ProcessState


class Runs:
    def __init__(
        self,
        state: State,
        active: ActiveRuns,
        pool: WorkerPool,
        queue: RunQueue,
        ends: Ends,
        stops: Stops,
    ) -> None:
        self._state = state
        self._active = active
        self._pool = pool
        self._queue = queue
        self._ends = ends
        self._stops = stops
        self.dispatcher = Dispatcher(state.config.dispatch_timeout_s, self._executed, state.spawn)
        # Told of each run whose start is committed (its deadline, if it has one, is set).
        self.started: Callable[[Run], None] = lambda run: None

    def send(self, run: Run, entry: WorkerEntry) -> None:
        """Hand ``run``, whose start on ``entry`` is committed, to that worker."""
        self.started(run)
        wait = seconds_between(run.created_at, run.started_at)
        if wait is not None:
            self._state.metrics.queue_wait.observe(wait)
        self.dispatcher.send(run, entry)

    def dispatch_ready(self) -> None:
        """Hand every scheduled run that a worker can take now to that worker."""
        if not self._state.leading:
            return
        for run, entry in self._queue.take_ready():
            self._state.spawn(self._dispatch(run, entry))

    async def _dispatch(self, run: Run, entry: WorkerEntry) -> None:
        state, active = self._state, self._active
        record = state.record(run.scope_id, run.process_id)
        if record is None or record.run_id != run.run_id or record.state is not S.SCHEDULED:
            self._pool.release(entry.worker_id, run.run_id)
            return
        new_record, started = transitions.start(record, run, entry.worker_id, now())
        change = state.stage(new_record)
        active.runs[run.run_id] = started
        try:
            await state.commit(change, started)
        except ShardsError as error:
            log.warning("could not record the start of run %s: %s", run.run_id, error, extra=of_run(run))
            self._pool.release(entry.worker_id, run.run_id)
            if state.leading:
                active.runs[run.run_id] = run
                self._queue.enqueue(run, front=True)
            return
        self.send(started, entry)

    def _executed(
        self, run: Run, entry: WorkerEntry, code: grpc.StatusCode | None, details: str, received: int
    ) -> None:
        """What came of handing ``run`` to ``entry`` (``code`` None: its code started)."""
        if code is not None:
            self._state.spawn(self._dispatch_failed(run.run_id, entry, code, details))
            return
        if run.run_id not in self._active.runs:
            return  # its end came first (back on the stream, or by FinishRun): nothing to note
        self._active.acked_at[run.run_id] = time.monotonic()
        if received:
            self._active.acked_seq[run.run_id] = received
        self._stops.pass_on_stop(run.run_id)

    async def _dispatch_failed(
        self, run_id: str, entry: WorkerEntry, code: grpc.StatusCode, details: str
    ) -> None:
        state, active = self._state, self._active
        run = active.get(run_id)
        if run is None or run.state.is_end:
            return
        reason = f"worker {entry.worker_id} refused the run: {code.name}: {details}"
        if (
            code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            and run.state is S.RUNNING
        ):
            # The code never started: give the run to another worker. One that
            # cannot be reached gets no run until it is heard from again (the
            # dispatcher marked it), so the others may take this one at once.
            entry.refused_until = time.monotonic() + 1.0
            record = state.require_record(run.scope_id, run.process_id)
            new_record, requeued = transitions.requeue(record, run)
            change = state.stage(new_record)
            active.runs[run_id] = requeued
            self._pool.release(entry.worker_id, run_id)
            await state.commit(change, requeued)
            self._queue.enqueue(requeued, front=True)
            state.spawn(self._redispatch_later(0.0 if entry.unreachable else 1.0))
            return
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            # The app's own callback raised (get_scope_data, get_process_list):
            # the worker's message is the app's error, type and message first.
            await self._ends.end_run(run, S.FAILED, details)
            return
        end = S.FAILED if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) else S.LOST
        await self._ends.end_run(run, end, reason, lost_cause=LOST_UNREACHABLE)

    async def _redispatch_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self.dispatch_ready()
