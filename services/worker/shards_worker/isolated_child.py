"""The child side of ``isolation="process"``: what runs in the run's own OS process.

The worker starts this module's ``main`` in a fresh OS process (see
``shards_worker.isolation``) and talks to it over one pipe:

- worker -> child: ``("stop",)``, ``("child_result", request_id, outcome...)``;
- child -> worker: ``("events", progress, log_lines)`` at most every
  ``progress_interval_s`` and only when something changed,
  ``("child", request_id, child, survive_failure, survive_stopping)``, and last
  ``("end", state, error, traceback, progress, log_lines)``.

So the context costs the code what it costs in a thread: ``report_progress``
is a check and an attribute write; a shipper thread sends the latest value at
the worker's shipping rate. Nothing here talks gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import signal
import sys
import threading
import traceback
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from shards.states import ProcessState
from shards_worker.capture import capturing
from shards_worker.context import HELD_LINES, ChildProcessFailed, ProcessStopped

_PR_SET_PDEATHSIG = 1
# Exit code of a child whose worker went away (its pipe closed).
ORPHANED_EXIT = 70


class _Channel:
    """The pipe to the worker, safe to send on from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.conn.send(message)


class _IsolatedContextBase:
    """The context API, as in a thread, backed by the pipe."""

    def __init__(
        self, channel: _Channel, run_id: str, scope_id: str, process_id: str, scope_data: Any
    ) -> None:
        self.run_id = run_id
        self.scope_id = scope_id
        self.process_id = process_id
        self.scope_data = scope_data
        self._channel = channel
        self._progress: tuple[str, float] | None = None
        self._stop_requested = False
        # Sent to the worker every progress interval; bounded as in a thread (context.HELD_LINES).
        self._logs: deque[str] = deque(maxlen=HELD_LINES)
        self._requests = 0
        self._waiting: dict[int, tuple[threading.Event, list[tuple[Any, ...]]]] = {}
        self._waiting_lock = threading.Lock()
        self.attempt = 1

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

    def _run_child_blocking(self, child: Any, survive_failure: bool, survive_stopping: bool) -> ProcessState:
        if self._stop_requested:
            raise ProcessStopped()
        with self._waiting_lock:
            self._requests += 1
            request_id = self._requests
            done = threading.Event()
            answer: list[tuple[Any, ...]] = []
            self._waiting[request_id] = (done, answer)
        self._channel.send(("child", request_id, child, survive_failure, survive_stopping))
        done.wait()
        outcome = answer[0]
        if outcome[0] == "ok":
            return ProcessState(outcome[1])
        if outcome[0] == "failed":
            raise ChildProcessFailed(outcome[1], ProcessState(outcome[2]), outcome[3])
        if outcome[0] == "stopped":
            raise ProcessStopped()
        raise RuntimeError(outcome[1])

    def _answer(self, request_id: int, outcome: tuple[Any, ...]) -> None:
        with self._waiting_lock:
            waiting = self._waiting.pop(request_id, None)
        if waiting is not None:
            waiting[1].append(outcome)
            waiting[0].set()

    def _take(self) -> tuple[tuple[str, float] | None, list[str]]:
        lines: list[str] = []
        while self._logs:
            lines.append(self._logs.popleft())
        return self._progress, lines


class IsolatedProcessContext(_IsolatedContextBase):
    """The context of a plain function running in its own OS process."""

    def run_process(
        self, child: Any, survive_failure: bool = False, survive_stopping: bool = False
    ) -> ProcessState:
        """Launch a child process through the worker, wait for it, return its end state."""
        return self._run_child_blocking(child, survive_failure, survive_stopping)


class AsyncIsolatedProcessContext(_IsolatedContextBase):
    """The context of an ``async def`` running in its own OS process."""

    async def run_process(
        self, child: Any, survive_failure: bool = False, survive_stopping: bool = False
    ) -> ProcessState:
        """As ``IsolatedProcessContext.run_process``, awaitable."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self._run_child_blocking, child, survive_failure, survive_stopping
        )


def _die_with_parent() -> None:
    """Linux: the kernel kills us if the process that started us goes (a worker killed -9)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _listen(conn: Connection, context: _IsolatedContextBase) -> None:
    """Messages from the worker; a closed pipe means the worker is gone, and so are we."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(ORPHANED_EXIT)
        if message[0] == "stop":
            context._stop_requested = True
        elif message[0] == "child_result":
            context._answer(message[1], message[2])


def _ship(channel: _Channel, context: _IsolatedContextBase, interval_s: float, done: threading.Event) -> None:
    shipped: tuple[str, float] | None = None
    while not done.wait(interval_s):
        progress, lines = context._take()
        if progress is shipped and not lines:
            continue
        channel.send(("events", progress if progress is not shipped else None, lines))
        shipped = progress


def main(
    conn: Connection,
    execute: Any,
    run_id: str,
    scope_id: str,
    process_id: str,
    scope_data: Any,
    progress_interval_s: float,
    attempt: int = 1,
    capture_output: bool = False,
) -> None:
    """Run ``execute`` with a context, report its end, exit."""
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a group of our own: a hard stop reaches what the code started too
    channel = _Channel(conn)
    is_async = inspect.iscoroutinefunction(execute)
    context_class = AsyncIsolatedProcessContext if is_async else IsolatedProcessContext
    context = context_class(channel, run_id, scope_id, process_id, scope_data)
    context.attempt = attempt
    threading.Thread(target=_listen, args=(conn, context), daemon=True, name="shards-listen").start()
    done = threading.Event()
    shipper = threading.Thread(
        target=_ship, args=(channel, context, progress_interval_s, done), daemon=True, name="shards-ship"
    )
    shipper.start()
    state, error, trace = ProcessState.DONE, "", ""
    try:
        with capturing(context.log if capture_output else None, whole_process=True):
            if is_async:
                asyncio.run(execute(context))
            else:
                execute(context)
    except ProcessStopped:
        state = ProcessState.STOPPED
    except ChildProcessFailed as failure:
        state, error = ProcessState.FAILED, str(failure)
    except BaseException as failure:  # SystemExit and KeyboardInterrupt end the run too
        state, error = ProcessState.FAILED, f"{type(failure).__name__}: {failure}"
        trace = "".join(traceback.format_exception(failure)).rstrip()
    done.set()
    shipper.join()
    progress, lines = context._take()
    channel.send(("end", state.value, error, trace, progress, lines))
    conn.close()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)  # no atexit handlers of the code's libraries: the end is reported
