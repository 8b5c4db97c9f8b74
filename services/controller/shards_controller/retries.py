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
(attempt 1 again). Children are not retried by the controller: a parent gets
its child's end and decides.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

from shards.errors import ShardsError
from shards.models import ProcessRecord, Run
from shards_controller.launch import Launcher, LaunchRequest
from shards_controller.state import State, now

log = logging.getLogger(__name__)


class Retries:
    def __init__(self, state: State) -> None:
        self._state = state
        self.launcher: Launcher | None = None  # set once composed (the launcher comes later)
        self._timers: dict[tuple[str, str], tuple[int, asyncio.TimerHandle]] = {}

    def plan(self, record: ProcessRecord, run: Run) -> ProcessRecord:
        """The ended ``record``, with its next attempt's time if its policy covers the end."""
        policy = record.retry
        if policy is None or run.parent_run_id or run.state not in policy.on:
            return record
        if run.attempt >= policy.max_attempts:
            return record
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
        try:
            await self.launcher.launch(
                LaunchRequest(
                    record.scope_id,
                    record.process_id,
                    idempotency_key=f"retry:{run_id}:{attempt}",
                    attempt=attempt,
                )
            )
        except ShardsError as error:
            log.warning("attempt %d of %s/%s could not be launched: %s", attempt, *key, error)
