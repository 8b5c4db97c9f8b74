"""A stop that is overdue: a worker reports code in a thread still going past its stop grace.

Such code cannot be stopped by force; the record says so until the run ends:
``stop_overdue_since``, and its error tells the user to give the code
``isolation="process"`` (every client shows an error; the end's own error, or
none for a stop, replaces it).
"""

from __future__ import annotations

from dataclasses import replace

from shards.models import Run
from shards.overdue import OVERDUE_ERROR
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
    overdue = replace(run, stop_overdue_since=moment, error=OVERDUE_ERROR)
    active.runs[run.run_id] = overdue
    marked = replace(record, stop_overdue_since=moment, error=OVERDUE_ERROR)
    state.spawn(state.commit(state.stage(marked), overdue))
