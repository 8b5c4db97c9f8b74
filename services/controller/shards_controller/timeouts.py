"""Time limits: a run still active at its deadline is stopped, and ends failed ("timed out after N s").

The deadline is set when the run starts (``transitions.start``: its start plus
its ``timeout_s``, the launch's or the definition's) and stored with the run,
so a new leader arms it again at take-over; one that passed meanwhile fires at
once. The stop is a user's stop (``Stops``), children first; in isolation it
escalates to the kill. ``timed_out`` is committed with the stop request, so the
end is a failure whichever controller receives it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from shards._logging import of_run
from shards.errors import ShardsError
from shards.models import Run
from shards.states import ProcessState
from shards_controller.active_runs import ActiveRuns
from shards_controller.state import State, now
from shards_controller.stops import Stops

log = logging.getLogger(__name__)
S = ProcessState


class Timeouts:
    def __init__(self, state: State, active: ActiveRuns, stops: Stops) -> None:
        self._state = state
        self._active = active
        self._stops = stops
        # Run id -> (the term that armed it, its timer): a timer of an earlier term is void.
        self._timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}

    def arm(self, run: Run) -> None:
        """Watch ``run``'s deadline (if it has one and has not timed out already)."""
        if run.deadline is None or run.timed_out or not run.state.is_active:
            return
        term = self._state.term
        armed = self._timers.get(run.run_id)
        if armed is not None:
            if armed[0] == term:
                return
            armed[1].cancel()
        delay = max((run.deadline - now()).total_seconds(), 0.0)
        loop = asyncio.get_running_loop()
        self._timers[run.run_id] = (term, loop.call_later(delay, self._fire, run.run_id, term))

    def arm_active(self) -> None:
        """After a take-over: every active run's deadline, as stored."""
        for run in list(self._active.runs.values()):
            self.arm(run)

    def _fire(self, run_id: str, term: int) -> None:
        armed = self._timers.get(run_id)
        if armed is not None and armed[0] == term:
            del self._timers[run_id]
        if self._state.leading and self._state.term == term:
            self._state.spawn(self._expire(run_id))

    async def _expire(self, run_id: str) -> None:
        run = self._active.get(run_id)
        # A run a user is stopping already ends as that stop says.
        if run is None or run.timed_out or run.state not in (S.RUNNING, S.SCHEDULED):
            return
        log.info(
            "run %s (%s/%s) timed out after %g s",
            run_id,
            run.scope_id,
            run.process_id,
            run.timeout_s,
            extra=of_run(run),
        )
        timed_out = replace(run, timed_out=True)
        self._active.runs[run_id] = timed_out
        try:
            await self._stops.stop_run(timed_out)
        except ShardsError as error:
            log.warning("could not stop run %s at its deadline: %s", run_id, error)
