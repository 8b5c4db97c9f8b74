"""Retries: a run that ends in a state its definition's retry policy covers is run again, later.

The plan is made as the run ends (``Ends.end_run`` asks ``plan``): the record
keeps its end state and gets ``next_attempt_at`` in the same write, so the
retry is stored before anyone hears of the end. At that time the leader
launches the next attempt, a new run of the same record with the next attempt
number; its launch clears ``next_attempt_at`` in the same write, and its
idempotency key (the failed run, the attempt) makes a second fire a no-op:
each attempt starts once, across failovers. A new leader arms every stored
plan at take-over (one whose time passed fires at once).

A user's stop between attempts cancels the plan; a user's launch replaces it
(attempt 1 again); a plan that cannot be launched at all (the process is
gone, a child's parent no longer runs) is dropped.

A child is retried by its own definition's policy, exactly as a top-level
run (children inherit nothing from their parent), as a child of the same
parent, on the parent's worker if it can (it knows the child's definition,
even one its code made). Only while that parent runs: a parent being stopped
gets no new attempt of its children, and its stop cancels those planned
(``Stops``), as cancelling a Temporal workflow cancels its children and their
retries, and cancelling a Hatchet run cancels its child runs. The parent waits
for the last attempt (``last_attempt``, GetRun's ``follow_retries``): its
``run_process`` returns the child's final outcome, not the first failure.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

from shards.errors import FailedPrecondition, NotFound, ShardsError
from shards.models import ProcessRecord, Run
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.launch import Launcher, LaunchRequest
from shards_controller.reads import Reads
from shards_controller.state import State, now

log = logging.getLogger(__name__)


def retry_key(run_id: str, attempt: int) -> str:
    """The idempotency key of the attempt that follows ``run_id``: each starts once, and is found by it."""
    return f"retry:{run_id}:{attempt}"


class Retries:
    def __init__(self, state: State, active: ActiveRuns, reads: Reads) -> None:
        self._state = state
        self._active = active
        self._reads = reads
        self.launcher: Launcher | None = None  # set once composed (the launcher comes later)
        self._timers: dict[tuple[str, str], tuple[int, asyncio.TimerHandle]] = {}

    def plan(self, record: ProcessRecord, run: Run) -> ProcessRecord:
        """The ended ``record``, with its next attempt's time if its policy covers the end."""
        policy = record.retry
        if policy is None or run.state not in policy.on:
            return record
        if run.attempt >= policy.max_attempts:
            return record
        if run.parent_run_id:
            parent = self._active.get(run.parent_run_id)
            if parent is None or parent.state is not ProcessState.RUNNING:
                return record  # the parent is being stopped, or has ended: nobody waits for more
        at = now() + timedelta(seconds=policy.delay_s(run.attempt))
        planned = replace(record, next_attempt_at=at)
        self.arm(planned)
        return planned

    def arm(self, record: ProcessRecord) -> None:
        if record.next_attempt_at is None:
            return
        term = self._state.term
        armed = self._timers.get(record.key)
        if armed is not None:
            armed[1].cancel()
        delay = max((record.next_attempt_at - now()).total_seconds(), 0.0)
        handle = asyncio.get_running_loop().call_later(delay, self._fire, record.key, record.run_id, term)
        self._timers[record.key] = (term, handle)
        if record.parent_run_id:
            self._active.retrying_children.setdefault(record.parent_run_id, set()).add(record.key)

    def arm_all(self) -> None:
        """After a take-over: every stored plan."""
        for scope in list(self._state.working.values()):
            for record in list(scope.values()):
                self.arm(record)

    def _fire(self, key: tuple[str, str], run_id: str, term: int) -> None:
        armed = self._timers.get(key)
        if armed is not None and armed[0] == term:
            del self._timers[key]
        if self._state.leading and self._state.term == term:
            self._state.spawn(self._attempt(key, run_id))

    async def _attempt(self, key: tuple[str, str], run_id: str) -> None:
        record = self._state.record(*key)
        # Stopped, launched by hand, or already attempted meanwhile: nothing to do.
        if record is None or record.next_attempt_at is None or record.run_id != run_id:
            return
        if record.state.is_active or self.launcher is None:
            return
        attempt = record.attempt + 1
        parent = self._active.get(record.parent_run_id) if record.parent_run_id else None
        try:
            await self.launcher.launch(
                LaunchRequest(
                    record.scope_id,
                    record.process_id,
                    idempotency_key=retry_key(run_id, attempt),
                    parent_run_id=record.parent_run_id,
                    preferred_worker_id=parent.worker_id if parent is not None else "",
                    attempt=attempt,
                )
            )
        except (FailedPrecondition, NotFound) as error:
            # It can never be launched (the process is gone, the parent no longer runs):
            # the plan goes, so that the record stops showing it and a waiting parent hears.
            log.warning("attempt %d of %s/%s cannot be launched: %s; no more attempts", attempt, *key, error)
            await self._drop(key, run_id)
        except ShardsError as error:
            log.warning("attempt %d of %s/%s could not be launched: %s", attempt, *key, error)

    async def _drop(self, key: tuple[str, str], run_id: str) -> None:
        state = self._state
        record = state.record(*key)
        if record is None or record.run_id != run_id or record.next_attempt_at is None:
            return
        if record.state.is_active:
            return
        try:
            await state.commit(state.stage(transitions.cancel_retry(record)))
        except ShardsError as error:
            log.warning("could not drop the next attempt of %s/%s: %s", *key, error)

    async def last_attempt(self, run: Run) -> Run:
        """``run`` if it is the last of its attempts, else the last one, once it has ended.

        Follows each ended attempt to the next one while a retry is planned or
        under way; across a take-over the caller asks again (NotLeader), and
        the next leader follows the same chain from the store.
        """
        while run.state.is_end:
            next_run_id = await self._next_attempt(run)
            if next_run_id is None:
                return run
            run = await self._reads.get_run(next_run_id, wait_until_ended=True)
        return run

    async def _next_attempt(self, run: Run) -> str | None:
        """The run id of the attempt after the ended ``run``; None when there will be none."""
        state, active = self._state, self._active
        key = retry_key(run.run_id, run.attempt + 1)
        while True:
            state.require_leader()
            record = state.record(run.scope_id, run.process_id)
            if record is None:
                return None
            if record.run_id == run.run_id:
                if record.next_attempt_at is None:
                    return None  # none planned, or cancelled (a stop, its parent's stop)
                await state.changed(run.scope_id, run.process_id)  # planned: until launched or dropped
                continue
            # Another run has the record: this run's next attempt, or a user's launch
            # (which replaced the plan). Memory has an active run's key, the store an ended one's.
            found = active.idempotency.get(key)
            if found is not None:
                return found
            stored = await state.from_store(state.store.find_run_by_idempotency_key(key))
            return stored.run_id if stored is not None else None
