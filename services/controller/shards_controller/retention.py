"""Run retention: the leader deletes ended runs past their time or their number, their logs with them.

Two settings, either or both (0: off; by default runs are kept forever):

- ``run_retention_days``: an ended run created longer ago than that goes;
- ``run_keep_per_process``: only the newest N runs of each process are kept.

Every ``run_prune_interval_s`` the leader's loop deletes, in batches of
``_BATCH``, what either setting lets go: by age from the store's ended runs
older than the cut-off (a query: off the hot path), by number from the
processes whose runs ended since the last pass (every process after a
take-over; at most 200 processes a pass, the rest at the next). Never
deleted: an active run, the run a record names (its last run: what
``shards logs SCOPE PROCESS`` reads), the parent of an active child.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from shards.models import Run
from shards_controller.active_runs import ActiveRuns
from shards_controller.state import State, now

log = logging.getLogger(__name__)

_BATCH = 500
_KEYS_PER_PASS = 200


class Retention:
    def __init__(self, state: State, active: ActiveRuns) -> None:
        self._state = state
        self._active = active
        self._touched: set[tuple[str, str]] = set()
        self._everything = True  # the first pass of a term looks at every process

    def ended(self, run: Run) -> None:
        """A run ended: its process may now have one run too many."""
        if self._state.config.run_keep_per_process > 0:
            self._touched.add(run.key)

    async def loop(self) -> None:
        self._everything = True
        while True:
            await asyncio.sleep(self._state.config.run_prune_interval_s)
            try:
                await self.prune_once()
            except Exception as error:  # the store is down, or we stepped down: next time
                log.warning("pruning ended runs failed: %r", error)

    async def prune_once(self) -> int:
        """One pass; how many runs were deleted."""
        config = self._state.config
        pruned = 0
        if config.run_retention_days > 0:
            cutoff = now() - timedelta(days=config.run_retention_days)
            after = ""
            while True:  # page by run id: the runs kept (a record's last) never hide the others
                found = await self._state.store.ended_runs_before(cutoff, _BATCH, after)
                pruned += await self._delete(found)
                if len(found) < _BATCH:
                    break
                after = found[-1].run_id
        if config.run_keep_per_process > 0:
            pruned += await self._prune_by_number(config.run_keep_per_process)
        if pruned:
            log.info("deleted %d ended runs and their logs (run retention)", pruned)
        return pruned

    async def _prune_by_number(self, keep: int) -> int:
        state = self._state
        if self._everything:
            keys = {
                key
                for scope in state.committed.values()
                for key in ((r.scope_id, r.process_id) for r in scope.values())
            }
            self._everything = False
        else:
            keys = set()
        keys |= self._touched
        # At most _KEYS_PER_PASS processes a pass (one query each; a scan on FerretDB): the rest next time.
        ordered = sorted(keys)
        self._touched = set(ordered[_KEYS_PER_PASS:])
        pruned = 0
        for scope_id, process_id in ordered[:_KEYS_PER_PASS]:
            runs = await state.store.list_runs(scope_id, process_id, keep + _BATCH)
            pruned += await self._delete(runs[keep:])
            if len(runs) == keep + _BATCH:
                self._touched.add((scope_id, process_id))  # more next time
        return pruned

    def _deletable(self, run: Run) -> bool:
        if run.state.is_active or run.run_id in self._active.runs or run.run_id in self._active.children:
            return False
        record = self._state.record(run.scope_id, run.process_id)
        return record is None or record.run_id != run.run_id

    async def _delete(self, runs: list[Run]) -> int:
        doomed = [run for run in runs if self._deletable(run)]
        if doomed:
            self._state.require_leader()
            await self._state.store.delete_runs(doomed, self._state.term)
            self._state.metrics.runs_pruned += len(doomed)
        return len(doomed)
