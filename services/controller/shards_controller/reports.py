"""What workers report of their runs: progress and log lines (pushed events), and ends.

Progress is not a state change: it is staged as a progress-only change, which
the committer publishes at once and writes behind, coalesced.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from shards.errors import FailedPrecondition, InvalidArgument, NotFound
from shards.models import Progress
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.states import ProcessState
from shards_controller import transitions
from shards_controller.active_runs import ActiveRuns
from shards_controller.ends import Ends
from shards_controller.overdue import mark_overdue
from shards_controller.run_logs import RunLogs
from shards_controller.state import State

S = ProcessState


@dataclass(frozen=True, slots=True)
class RunEndReport:
    """A worker's report of how one of its runs ended."""

    run_id: str
    state: ProcessState
    error: str = ""
    progress: Progress | None = None
    log_lines: tuple[str, ...] = ()
    # The lines not yet acknowledged stored, from log_offset (None: a worker without offsets).
    log_rest: tuple[str, ...] = ()
    log_offset: int | None = None


class Reports:
    def __init__(self, state: State, active: ActiveRuns, ends: Ends, logs: RunLogs) -> None:
        self._state = state
        self._active = active
        self._ends = ends
        self._logs = logs
        # Runs whose end a FinishRun is applying now -> that application.
        self._ending: dict[str, asyncio.Task[object]] = {}

    def push_events(self, worker_id: str, events: Iterable[tuple[pb.RunEvent, list[str]]]) -> int:
        """Progress and log lines (each event with its lines) from a worker; returns how many
        events were refused."""
        state, active = self._state, self._active
        state.require_leader()
        refused = 0
        for event, lines in events:
            run = active.get(event.run_id)
            if run is None or run.worker_id != worker_id:
                refused += 1
                continue
            if event.has_log_offset:
                # Offsets make a resend safe: only the lines not yet had are kept (and tailed).
                new = self._logs.append(run.run_id, event.log_offset, lines, event.replaces_log)
                active.append_logs(event.run_id, new)
            elif event.replaces_log:
                active.replace_logs(event.run_id, lines)
            else:
                active.append_logs(event.run_id, self._logs.append(run.run_id, None, lines))
            if event.stop_overdue:
                mark_overdue(state, active, run)
            if not event.HasField("progress") or run.state.is_end:
                continue  # an end being written has the run's last progress: a late report must not undo it
            rate = event.progress.rate
            if not 0.0 <= rate <= 1.0:
                refused += 1
                continue
            progress = Progress(event.progress.message[:4096], rate)
            record = state.record(run.scope_id, run.process_id)
            if record is None or record.run_id != run.run_id or record.progress == progress:
                continue
            active.runs[run.run_id] = replace(run, progress=progress)
            state.committer.progress(
                state.stage(transitions.report_progress(record, progress), state_change=False)
            )
        return refused

    async def finish_runs(self, worker_id: str, ends: Sequence[RunEndReport]) -> None:
        """A worker reports the ends of runs, taken or refused whole.

        Idempotent: an end already recorded (a retry, or a run marked lost
        meanwhile) is accepted and ignored. The ends are staged together, so
        they reach the store in one write.
        """
        state, active = self._state, self._active
        state.require_leader()
        for end in ends:
            if end.state not in (S.DONE, S.FAILED, S.STOPPED):
                raise InvalidArgument(f"a run ends done, failed or stopped, not {end.state}")
            run = active.get(end.run_id)
            if run is None:
                stored = await state.from_store(state.store.get_run(end.run_id))
                if stored is None:
                    raise NotFound(f"run {end.run_id!r} does not exist")
                if stored.worker_id != worker_id:
                    raise FailedPrecondition(f"run {end.run_id!r} is not assigned to worker {worker_id!r}")
                continue
            if run.worker_id != worker_id:
                raise FailedPrecondition(f"run {end.run_id!r} is not assigned to worker {worker_id!r}")
            if run.state is S.SCHEDULED:
                raise FailedPrecondition(f"run {end.run_id!r} has not started")
        # The lines the worker did not know stored go to the store before the end
        # does: once the end is acknowledged, the worker forgets them. An end carries
        # the newest of them: the older ones it sent on the stream, which FinishRun may
        # have overtaken, so a gap before them is waited for (briefly) before it is lost.
        for end in ends:
            run = active.get(end.run_id)
            if (
                run is not None
                and run.worker_id == worker_id
                and run.state.is_active
                and end.log_offset is not None
            ):
                await self._logs.caught_up(end.run_id, end.log_offset)
                self._logs.append(end.run_id, end.log_offset, end.log_rest, resend=True)
        await self._logs.flush([end.run_id for end in ends])
        # Checked whole; now applied. A run that ended while the store was read is
        # skipped; one whose end another call (this one's retry: the waits above let
        # it in) is applying is waited for, so that the answer never comes before
        # the end is recorded. An end once begun is applied whole, even if its
        # caller goes: left halfway, its run would keep its worker's slot.
        applying: list[asyncio.Task[object]] = []
        for end in ends:
            run = active.get(end.run_id)
            if end.run_id in self._ending:
                applying.append(self._ending[end.run_id])
                continue
            if run is None or run.worker_id != worker_id or run.state.is_end:
                continue
            # The end's lines are the run's tail as its worker kept it: they
            # replace what came on the (lossy) event stream, once and in order.
            active.replace_logs(end.run_id, end.log_lines)
            task = asyncio.ensure_future(self._ends.end_run(run, end.state, end.error, end.progress))
            self._ending[end.run_id] = task
            task.add_done_callback(functools.partial(self._applied, end.run_id))
            applying.append(task)
        if applying:
            done = await asyncio.shield(asyncio.gather(*applying, return_exceptions=True))
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome

    def _applied(self, run_id: str, _: object) -> None:
        self._ending.pop(run_id, None)
