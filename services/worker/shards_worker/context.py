"""What running process code gets: the seeds' ProcessContext, sync and async.

``report_progress`` only records the latest value (a check and an attribute
write); the worker ships the latest values at a bounded rate, so calling it
in a tight loop costs the process nothing more.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from shards.states import ProcessState

# The lines a run's code logged that the worker has not yet moved to the run's buffer (it does every
# progress interval): past this many (a run logging over 4 million lines a second), the oldest go.
HELD_LINES = 200_000

if TYPE_CHECKING:
    from shards_worker.definition import ProcessDefinition
    from shards_worker.runner import Runner


class ProcessStopped(Exception):
    """Raise (or let ``check_stop`` raise) to end a process as ``stopped``."""


class ChildProcessFailed(Exception):
    """A child launched with ``run_process`` failed (or was lost) and the parent did not survive it."""

    def __init__(self, process_id: str, state: ProcessState, error: str) -> None:
        detail = f": {error}" if error else ""
        super().__init__(f"child process {process_id!r} ended {state}{detail}")
        self.process_id = process_id
        self.state = state
        self.error = error


class _ContextBase:
    """State and cheap calls shared by both flavours."""

    def __init__(self, runner: Runner, run_id: str, scope_id: str, process_id: str, scope_data: Any) -> None:
        self.run_id = run_id
        self.scope_id = scope_id
        self.process_id = process_id
        self.scope_data = scope_data
        self._runner = runner
        self._progress: tuple[str, float] | None = None
        self._stop_requested = False
        # Moved every progress interval into the run's LogBuffer; bounded, as a flood must not
        # grow the worker without end.
        self._logs: deque[str] = deque(maxlen=HELD_LINES)
        self._children_launched = 0
        self.attempt = 1  # 2, 3... when the controller runs it again after a failure (RetryPolicy)

    def report_progress(self, message: str, rate: float) -> None:
        """Record the latest progress: ``rate`` in 0..1 (ValueError otherwise, NaN included)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"progress rate must be within 0..1, got {rate!r}")
        self._progress = (message, rate)

    def should_continue(self) -> bool:
        """False once a stop was requested: return (or raise ProcessStopped) soon."""
        return not self._stop_requested

    def check_stop(self) -> None:
        """Raise ProcessStopped if a stop was requested."""
        if self._stop_requested:
            raise ProcessStopped()

    def log(self, line: str) -> None:
        """A log line, kept with the run: its whole log is stored (up to the controller's cap)."""
        self._logs.append(line)

    def _child_key(self, process_id: str) -> str:
        # Same key on a retry of the same call, a new one for each call.
        self._children_launched += 1
        return f"{self.run_id}/child/{self._children_launched}/{process_id}"


class ProcessContext(_ContextBase):
    """The context of a plain (threaded) process function."""

    def run_process(
        self,
        child: ProcessDefinition | str,
        survive_failure: bool = False,
        survive_stopping: bool = False,
    ) -> ProcessState:
        """Launch a child process through the controller, wait for it, return its end state.

        A failed (or lost) child raises ChildProcessFailed unless
        ``survive_failure``; a stopped child raises ProcessStopped unless
        ``survive_stopping``.
        """
        future = asyncio.run_coroutine_threadsafe(
            self._runner.run_child(self, child, survive_failure, survive_stopping), self._runner.loop
        )
        return future.result()


class AsyncProcessContext(_ContextBase):
    """The context of an ``async def`` process."""

    async def run_process(
        self,
        child: ProcessDefinition | str,
        survive_failure: bool = False,
        survive_stopping: bool = False,
    ) -> ProcessState:
        """As ``ProcessContext.run_process``, awaitable."""
        return await self._runner.run_child(self, child, survive_failure, survive_stopping)
