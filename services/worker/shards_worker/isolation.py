"""``isolation="process"``: a run in an OS process of its own, which a stop can end by force.

**forkserver, not fork or spawn.** ``fork`` copies the worker with gRPC's
threads and locks mid-flight (gRPC core is not fork-safe: a child can hang on
a lock whose owner did not come along). ``spawn`` is safe but starts a new
interpreter and imports everything for every run (tens to hundreds of ms).
``forkserver`` starts one clean, single-threaded server process once (no gRPC
channel, no thread), with the child runtime and the app's module imported
ahead; each run is then a ``fork`` of *that*: a few ms, and safe. The code
(``execute``) is pickled by reference, so it must be a module-level function,
and the scope data must pickle (checked at definition / at launch).

**The stop escalates** (``IsolatedRun.stop``): the child's ``should_continue()``
turns false at once; after ``stop_grace_s`` its process group gets SIGTERM;
after ``kill_grace_s`` more, SIGKILL. The run ends ``stopped``, saying how
("killed (SIGKILL) after 15 s ..."). A child that dies on its own (a
segfault, the OOM killer, ``os._exit``) ends the run ``failed`` with the
signal or exit code; the worker and its other runs go on.

The child reports over one pipe (``shards_worker.isolated_child``): progress
and log lines at most every ``progress_interval_s`` and only on change, child
launches, and the end. Here a reader thread hands what comes to the loop,
into a worker-side context, so shipping to the controller is the same as for
a run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from shards.states import ProcessState
from shards_worker import isolated_child
from shards_worker.context import ChildProcessFailed, ProcessContext, ProcessStopped
from shards_worker.definition import ProcessDefinition
from shards_worker.forking import CONTEXT, RunProcess, warm_up

if TYPE_CHECKING:
    from shards_worker.runner import Runner

log = logging.getLogger(__name__)
S = ProcessState


class RunEnded(Exception):
    """How an isolated run ended when it is not the code's own return or exception."""

    def __init__(self, state: ProcessState, error: str) -> None:
        super().__init__(error)
        self.state = state
        self.error = error


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = " (the OOM killer, or someone, killed it)" if number == signal.SIGKILL else ""
        return f"its OS process died of {name} (signal {number}){hint}"
    return f"its OS process exited with code {exitcode} before the code returned"


class IsolatedRun:
    """One run in its own OS process, seen from the worker."""

    def __init__(
        self,
        runner: Runner,
        definition: ProcessDefinition,
        context: ProcessContext,
        progress_interval_s: float,
    ) -> None:
        self._runner = runner
        self._definition = definition
        self._context = context
        self._progress_interval_s = progress_interval_s
        self._loop = asyncio.get_running_loop()
        self._conn: Connection | None = None
        self._process: Any = None
        self._exited = asyncio.Event()
        self._end: tuple[Any, ...] | None = None
        self._stop_asked_at: float | None = None
        self._stop_sent = False
        self._term_at: float | None = None  # when SIGTERM is due (monotonic)
        self._grace_used = 0.0
        self._by_shutdown = False  # the escalation is the worker's shutdown, not a user's stop
        self._escalation: asyncio.Task[None] | None = None
        self._signalled = ""  # the last signal we sent: SIGTERM or SIGKILL
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def execute(self) -> None:
        """Run the code to its end: returns (done), or raises ProcessStopped or RunEnded."""
        context = self._context
        parent_conn, child_conn = CONTEXT.Pipe(duplex=True)
        self._conn = parent_conn
        self._process = RunProcess(
            target=isolated_child.main,
            args=(
                child_conn,
                self._definition.execute,
                context.run_id,
                context.scope_id,
                context.process_id,
                context.scope_data,
                self._progress_interval_s,
                context.attempt,
                self._definition.captures_output,
            ),
            name=f"shards-run-{context.run_id}",
        )
        try:
            await self._loop.run_in_executor(None, self._start, child_conn)
        except Exception as error:
            parent_conn.close()
            raise RunEnded(
                S.FAILED, f"could not start its OS process: {type(error).__name__}: {error}"
            ) from error
        threading.Thread(target=self._read, daemon=True, name=f"shards-read-{context.run_id}").start()
        if self._stop_asked_at is not None:
            self._send(("stop",))  # asked while it started
        try:
            await self._exited.wait()
            await self._loop.run_in_executor(None, self._process.join)
        finally:
            if self._escalation is not None:
                self._escalation.cancel()
            for task in list(self._tasks):
                task.cancel()
            parent_conn.close()
        self._conclude()

    def _start(self, child_conn: Connection) -> None:
        warm_up(getattr(self._definition.execute, "__module__", ""))
        try:
            self._process.start()
        finally:
            child_conn.close()

    def _read(self) -> None:
        assert self._conn is not None
        conn = self._conn
        try:
            while True:
                message = conn.recv()
                self._loop.call_soon_threadsafe(self._on_message, message)
        except (EOFError, OSError):
            pass
        except Exception as error:  # an unpicklable message: the child is beyond help
            log.warning("run %s: unreadable message from its process: %s", self._context.run_id, error)
            self._kill_group(signal.SIGKILL)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is gone
            self._loop.call_soon_threadsafe(self._exited.set)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        context = self._context
        if kind == "events":
            _, progress, lines = message
            if progress is not None:
                context._progress = progress
            context._logs.extend(lines)
        elif kind == "child":
            task = asyncio.create_task(self._child(*message[1:]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "end":
            self._end = message

    async def _child(
        self, request_id: int, child: Any, survive_failure: bool, survive_stopping: bool
    ) -> None:
        outcome: tuple[Any, ...]
        try:
            state = await self._runner.run_child(self._context, child, survive_failure, survive_stopping)
            outcome = ("ok", state.value)
        except ChildProcessFailed as failure:
            outcome = ("failed", failure.process_id, failure.state.value, failure.error)
        except ProcessStopped:
            outcome = ("stopped",)
        except Exception as error:
            outcome = ("error", f"launching the child failed: {type(error).__name__}: {error}")
        self._send(("child_result", request_id, outcome))

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._conn is None or self._exited.is_set():
            return
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(message)

    def _conclude(self) -> None:
        context = self._context
        if self._end is not None:
            _, state_value, error, trace, progress, lines = self._end
            if progress is not None:
                context._progress = progress
            context._logs.extend(lines)
            if trace:
                context.log(trace)
            state = ProcessState(state_value)
            if state is S.DONE:
                return
            if state is S.STOPPED:
                raise ProcessStopped()
            raise RunEnded(state, error)
        exitcode = self._process.exitcode if self._process.exitcode is not None else -signal.SIGKILL
        if self._signalled and self._stop_asked_at is not None:
            elapsed = _seconds(time.monotonic() - self._stop_asked_at)
            grace, kill_grace = _seconds(self._grace_used), _seconds(self._definition.kill_grace_s)
            what = "the worker's shutdown" if self._by_shutdown else "the stop"
            if self._signalled == "SIGKILL":
                how = (
                    f"killed (SIGKILL) after {elapsed} s: it ignored {what} for {grace} s "
                    f"and SIGTERM for {kill_grace} s"
                )
            else:
                how = f"terminated (SIGTERM) after {elapsed} s: it ignored {what} for {grace} s"
            # A user's stop ends it stopped; a worker going away is a failure of the run.
            raise RunEnded(S.FAILED if self._by_shutdown else S.STOPPED, how)
        raise RunEnded(S.FAILED, describe_exit(exitcode))

    # ------------------------------------------------------------ the stop

    def stop(self, grace_s: float, *, by_shutdown: bool = False) -> None:
        """Ask the code to stop; end its process by force if it has not after ``grace_s``.

        Asked again with a shorter grace, the earlier deadline holds.
        """
        now = time.monotonic()
        self._by_shutdown = self._by_shutdown or by_shutdown
        if self._stop_asked_at is None:
            self._stop_asked_at = now
        if not self._stop_sent and self._conn is not None:
            self._stop_sent = True
            self._send(("stop",))
        due = now + max(grace_s, 0.0)
        if self._term_at is not None and due >= self._term_at:
            return
        self._term_at = due
        self._grace_used = due - self._stop_asked_at
        if self._escalation is not None:
            self._escalation.cancel()
        self._escalation = asyncio.create_task(self._escalate(due), name=f"escalate-{self._context.run_id}")

    async def _escalate(self, term_at: float) -> None:
        await asyncio.sleep(max(term_at - time.monotonic(), 0.0))
        while self._process is None or self._process.pid is None:  # still starting
            if self._exited.is_set():
                return
            await asyncio.sleep(0.01)
        if self._exited.is_set():
            return
        self._signalled = "SIGTERM"
        self._kill_group(signal.SIGTERM)
        await asyncio.sleep(self._definition.kill_grace_s)
        if self._exited.is_set():
            return
        self._signalled = "SIGKILL"
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, signum: signal.Signals) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.killpg(pid, signum)  # the child leads a process group of its own
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    @property
    def escalation_s(self) -> float:
        """The longest a stop can take from now: what a worker's shutdown waits for."""
        return self._definition.stop_grace_s + self._definition.kill_grace_s
