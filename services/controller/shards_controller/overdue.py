"""A stop that is overdue: a worker reports code in a thread still going past its stop grace.

Such code cannot be stopped by force; the record says so (``stop_overdue_since``)
until the run ends, and a UI tells the user to give the code ``isolation="process"``.
"""

from __future__ import annotations

from dataclasses import replace

from shards.models import Run
from shards.states import ProcessState
from shards_controller.active_runs import ActiveRuns
from shards_controller.state import State, now

S = ProcessState


def mark_overdue(state: State, active: ActiveRuns, run: Run) -> None:
    """Stamp the record and the run (committed in the background; repeats are ignored)."""
    record = state.record(run.scope_id, run.process_id)
    if record is None or record.run_id != run.run_id or record.stop_overdue_since is not None:
        return
    if run.state not in (S.STOP_REQUESTED, S.STOPPING):
        return
    moment = now()
    overdue = replace(run, stop_overdue_since=moment)
    active.runs[run.run_id] = overdue
    state.spawn(state.commit(state.stage(replace(record, stop_overdue_since=moment)), overdue))
