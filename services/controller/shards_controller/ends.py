"""The end of a run, however it came: reported by its worker, stopped, refused, or lost.

Ending frees its worker's slot and tells ``slot_freed`` (the runs' dispatch),
which hands the slot to the next scheduled run, whose start then goes in the
same write as this end (the worker's slot is free once its code ended: it
counts runs not ended); then it commits the run's end state with its record,
forgets the run on its worker and wakes those waiting for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shards._logging import of_run
from shards.errors import ShardsError
from shards.models import ProcessRecord, Progress, Run
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.metrics import LOST_UNLISTED
from shards_controller.state import State, now
from shards_controller.workers import WorkerEntry, WorkerPool

log = logging.getLogger(__name__)


class Ends:
    def __init__(self, state: State, active: ActiveRuns, pool: WorkerPool) -> None:
        self._state = state
        self._active = active
        self._pool = pool
        self.slot_freed: Callable[[], None] = lambda: None
        # Asked of each ended record before it is written: the same, or with its next attempt planned.
        self.plan_retry: Callable[[ProcessRecord, Run], ProcessRecord] = lambda record, run: record
        # Told of every end (the catalog removes records that a define found no longer listed).
        self.run_ended: Callable[[Run], None] = lambda run: None
        # Told of every end too: the run's log is stored and forgotten.
        self.log_ended: Callable[[Run], None] = lambda run: None
        # The lines a run logged and dropped past the cap, as its end records them.
        self.log_counts: Callable[[str], tuple[int, int]] = lambda run_id: (0, 0)

    async def end_run(
        self,
        run: Run,
        state: ProcessState,
        error: str,
        progress: Progress | None = None,
        *,
        lost_cause: str = LOST_UNLISTED,
    ) -> Run:
        record = self._state.require_record(run.scope_id, run.process_id)
        tail = self._active.log_tails.get(run.run_id)
        lines, dropped = self.log_counts(run.run_id)
        log_fields: dict[str, Any] = {"log_lines": lines, "log_dropped": dropped}
        if tail:
            log_fields["log_tail"] = tuple(tail)
        new_record, ended = transitions.end(
            record, run, state, now(), error=error, progress=progress, **log_fields
        )
        new_record = self.plan_retry(new_record, ended)
        change = self._state.stage(new_record)
        self._active.runs[run.run_id] = ended
        # Its slot is free now: the next run's start, staged by ``slot_freed`` on the loop's next
        # turn (after this end is queued), goes in the same write instead of the one after.
        freed = self._pool.free_slot(run.worker_id, run.run_id)
        if freed:
            self.slot_freed()
        await self._state.commit(change, ended)
        metrics = self._state.metrics
        metrics.run_ended(state, ended.started_at, ended.ended_at)
        if state is ProcessState.LOST:
            metrics.lost_runs.inc((lost_cause,))
            log.warning("run %s (%s/%s) lost: %s", run.run_id, *run.key, error, extra=of_run(run))
        self._run_ended(ended, dispatched=freed)
        return ended

    def _run_ended(self, run: Run, *, dispatched: bool) -> None:
        """``dispatched``: its slot went to the next run already (``end_run``)."""
        self._pool.release(run.worker_id, run.run_id)
        self._active.forget(run)
        self._active.ended(run)
        self.run_ended(run)
        self.log_ended(run)
        if not dispatched:
            self.slot_freed()

    async def lose_runs(self, entry: WorkerEntry, reason: str, cause: str) -> None:
        """Every run ``entry`` had started ends lost (the worker restarted or went silent)."""
        for run_id in list(entry.runs):
            run = self._active.get(run_id)
            if run is not None and run.state.is_active and run.state is not ProcessState.SCHEDULED:
                try:
                    await self.end_run(run, ProcessState.LOST, reason, lost_cause=cause)
                except ShardsError as error:
                    log.warning("could not mark run %s lost: %s", run_id, error, extra=of_run(run))
