"""Scheduled runs waiting for a worker, in launch order, and the choice of a worker for each.

Top-level runs wait for a free slot; children only for a live worker (they
need no slot: their parent holds one), so they queue apart. The queue only
reserves: starting a run it hands out is the job of ``runs``.
"""

from __future__ import annotations

from collections import deque

from shards.models import Run
from shards.states import ProcessState
from shards_controller.active_runs import ActiveRuns
from shards_controller.workers import WorkerEntry, WorkerPool


class RunQueue:
    def __init__(self, pool: WorkerPool, active: ActiveRuns) -> None:
        self._pool = pool
        self._active = active
        self.reset()

    def reset(self) -> None:
        # Scheduled run ids.
        self.top: deque[str] = deque()
        self.children: deque[str] = deque()

    def enqueue(self, run: Run, *, front: bool = False) -> None:
        queue = self.children if run.parent_run_id else self.top
        if front:
            queue.appendleft(run.run_id)
        else:
            queue.append(run.run_id)

    def reserve_now(self, run: Run) -> WorkerEntry | None:
        """A worker to take ``run`` right away (reserved), unless others wait before it."""
        needs_slot = not run.parent_run_id
        waiting = self.top if needs_slot else self.children
        if waiting:
            return None
        entry = self._pool.choose(run.scope_id, needs_slot, self._active.preferred.get(run.run_id, ""))
        if entry is not None:
            self._pool.assign(entry, run.run_id, needs_slot)
        return entry

    def take_ready(self) -> list[tuple[Run, WorkerEntry]]:
        """Every scheduled run that a worker can take now, each reserved on that worker."""
        ready: list[tuple[Run, WorkerEntry]] = []
        self.children = self._take(self.children, ready, needs_slot=False)
        self.top = self._take(self.top, ready, needs_slot=True)
        return ready

    def _take(self, queue: deque[str], ready: list[tuple[Run, WorkerEntry]], needs_slot: bool) -> deque[str]:
        passed_over: deque[str] = deque()  # no free worker serves their scope yet
        free = self._pool.free_slots() if needs_slot else 1
        while queue and free > 0:
            run_id = queue.popleft()
            run = self._active.get(run_id)
            if run is None or run.state is not ProcessState.SCHEDULED:
                continue
            entry = self._pool.choose(run.scope_id, needs_slot, self._active.preferred.get(run_id, ""))
            if entry is None:
                passed_over.append(run_id)
                continue
            self._pool.assign(entry, run_id, needs_slot)
            free -= needs_slot
            ready.append((run, entry))
        # No slot left anywhere: the rest keeps its order, behind those passed
        # over, without a copy (every run's end comes here, however long the queue).
        queue.extendleft(reversed(passed_over))
        return queue
