"""Pure functions that move a record and its run from one state to the next.

Each checks the life-cycle table first, stamps the seeds' timestamps and
returns new frozen values; nothing here does I/O, so the controller's rules
are testable without a server.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shards.models import NO_PROGRESS, ProcessRecord, Progress, Run
from shards.states import ProcessState, check_transition
from shards_controller.fast_replace import replace

S = ProcessState
#: A run's progress when its code starts, and at a success that reported nothing (the original's words).
STARTING = Progress("Starting…", 0.0)
ALL_DONE = Progress("All done", 1.0)


def _moved(record: ProcessRecord, state: ProcessState) -> None:
    check_transition(record.state, state)


def schedule(record: ProcessRecord, run: Run) -> ProcessRecord:
    """A launch: the record takes the new run and waits for a worker."""
    _moved(record, S.SCHEDULED)
    # The previous run's status goes (as the original unsets it when it
    # schedules): a new run never shows "done at" from the last one. Its
    # running_since stays until this run starts.
    return replace(
        record,
        state=S.SCHEDULED,
        error="",
        progress=NO_PROGRESS,
        done_at=None,
        stopped_at=None,
        failed_at=None,
        duration=None,
        run_id=run.run_id,
        parent_run_id=run.parent_run_id,
        worker_id="",
        stop_overdue_since=None,
        attempt=run.attempt,
        next_attempt_at=None,
    )


def start(record: ProcessRecord, run: Run, worker_id: str, now: datetime) -> tuple[ProcessRecord, Run]:
    """Handed to a worker; a time limit counts from here."""
    _moved(record, S.RUNNING)
    deadline = now + timedelta(seconds=run.timeout_s) if run.timeout_s else None
    return (
        replace(record, state=S.RUNNING, running_since=now, worker_id=worker_id, error="", progress=STARTING),
        replace(
            run, state=S.RUNNING, worker_id=worker_id, started_at=now, deadline=deadline, progress=STARTING
        ),
    )


def requeue(record: ProcessRecord, run: Run) -> tuple[ProcessRecord, Run]:
    """The worker refused the run before starting it: back to the queue."""
    _moved(record, S.SCHEDULED)
    return (
        replace(record, state=S.SCHEDULED, running_since=None, worker_id=""),
        replace(run, state=S.SCHEDULED, worker_id="", started_at=None),
    )


def request_stop(record: ProcessRecord, run: Run) -> tuple[ProcessRecord, Run]:
    _moved(record, S.STOP_REQUESTED)
    return replace(record, state=S.STOP_REQUESTED), replace(run, state=S.STOP_REQUESTED)


def stopping(record: ProcessRecord, run: Run) -> tuple[ProcessRecord, Run]:
    """The worker has told the code to stop."""
    _moved(record, S.STOPPING)
    return replace(record, state=S.STOPPING), replace(run, state=S.STOPPING)


def end(
    record: ProcessRecord,
    run: Run,
    state: ProcessState,
    now: datetime,
    *,
    error: str = "",
    progress: Progress | None = None,
    **run_fields: Any,
) -> tuple[ProcessRecord, Run]:
    """The run ended in ``state`` (done, failed, stopped or lost); ``run_fields``: what else the
    ended run records (its log's counts and tail).

    A run asked to stop that then returns normally ends ``stopped``: the user
    asked for a stop and the code honoured it.
    """
    if state is S.DONE and record.state in (S.STOP_REQUESTED, S.STOPPING):
        state = S.STOPPED
    if run.timed_out and state in (S.DONE, S.STOPPED, S.FAILED):
        # Stopped by the controller at its deadline: a failure, whatever the code did then.
        how = f"timed out after {run.timeout_s:g} s"
        error = f"{how}; {error}" if error else how
        state = S.FAILED
    _moved(record, state)
    duration = now - record.running_since if record.running_since is not None else None
    new_progress = progress if progress is not None else record.progress
    if state is S.DONE:
        # Success is 100 %, keeping the code's last word (the original says "All done").
        reported = new_progress.message if new_progress != STARTING else ""
        new_progress = Progress(reported or ALL_DONE.message, 1.0)
    # Failed and lost both record when the failure was noticed. One ``replace`` each: it is a
    # good part of the controller's CPU a launch.
    done, stopped = state is S.DONE, state is S.STOPPED
    ended = replace(
        record,
        state=state,
        error=error,
        progress=new_progress,
        duration=duration,
        stop_overdue_since=None,
        done_at=now if done else record.done_at,
        stopped_at=now if stopped else record.stopped_at,
        failed_at=record.failed_at if done or stopped else now,
    )
    return (
        ended,
        replace(run, state=state, error=error, progress=new_progress, ended_at=now, **run_fields),
    )


def cancel_retry(record: ProcessRecord) -> ProcessRecord:
    """A user's stop between attempts: no more attempts."""
    return replace(record, next_attempt_at=None)


def dismiss(record: ProcessRecord) -> ProcessRecord:
    """An ended process back to idle, its messages and end times cleared (the original's dismiss).

    ``running_since``, the run id and the worker stay: they say where the
    last run is, and the run itself (``ListRuns``) keeps everything.
    """
    if record.state is not S.IDLE:
        _moved(record, S.IDLE)
    return replace(
        record,
        state=S.IDLE,
        error="",
        progress=NO_PROGRESS,
        done_at=None,
        stopped_at=None,
        failed_at=None,
        duration=None,
    )


def report_progress(record: ProcessRecord, progress: Progress) -> ProcessRecord:
    return replace(record, progress=progress)
