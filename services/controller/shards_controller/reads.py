"""Reads of runs, scopes and workers: an active run from memory (once persisted), an ended one from the store.

Reads of process records are the committed view's (``State.list_processes``,
``State.get_process``).
"""

from __future__ import annotations

from shards.errors import NotFound
from shards.models import Run, ScopeSummary, WorkerInfo
from shards_controller import scopes
from shards_controller.active_runs import ActiveRuns
from shards_controller.state import State
from shards_controller.workers import WorkerPool


class Reads:
    def __init__(self, state: State, active: ActiveRuns, pool: WorkerPool) -> None:
        self._state = state
        self._active = active
        self._pool = pool

    def list_scopes(self) -> list[ScopeSummary]:
        self._state.require_leader()
        return scopes.summaries(self._state.committed)

    def list_workers(self) -> list[WorkerInfo]:
        self._state.require_leader()
        return sorted((w.info() for w in self._pool.all()), key=lambda w: w.worker_id)

    async def list_runs(self, scope_id: str, process_id: str, limit: int, after: str = "") -> list[Run]:
        """Newest first, ``limit`` of them, after the run ``after`` (a page's last) when given."""
        state, active = self._state, self._active
        state.require_leader()
        stored = await state.from_store(state.store.list_runs(scope_id, process_id, limit, after))
        views = [active.view(active.runs.get(run.run_id, run)) for run in stored]
        await state.committed_view()
        return views

    async def get_run(self, run_id: str, wait_until_ended: bool) -> Run:
        state, active = self._state, self._active
        state.require_leader()
        run = active.get(run_id)
        if run is None:
            stored = await state.from_store(state.store.get_run(run_id))
            if stored is None:
                raise NotFound(f"run {run_id!r} does not exist")
            return stored
        if not wait_until_ended:
            view = active.view(run)
            await state.committed_view()
            return view
        return await active.wait_for_end(run_id)

    async def run_worker(self, run_id: str) -> str | None:
        """The worker a run was given to ("" if none yet); None if there is no such run.

        Answers from the working view without waiting for writes in flight: a
        worker learns of a run only once its start is persisted, so this only
        ever confirms what the store already has. Only the leader knows: a standby's
        store may not have the newest runs yet (they are written behind), and a
        worker told "no such run" would drop the run's end.
        """
        self._state.require_leader()
        run = self._active.get(run_id)
        if run is None:
            run = await self._state.from_store(self._state.store.get_run(run_id))
        return run.worker_id if run is not None else None
