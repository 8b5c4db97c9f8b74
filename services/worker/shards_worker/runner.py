"""The worker's engine: runs process code, ships progress, reports the end.

Plain functions run in a thread pool; ``async def`` processes run on the
worker's loop. Progress is collected from every running context at most every
``progress_interval_s`` and sent as one batch on a long-lived stream: the rate
of messages to the controller is bounded whatever the code does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from shards._logging import run_fields, set_run_context
from shards.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from shards.models import ProcessInfo
from shards.overdue import OVERDUE_ADVICE
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.states import ProcessState
from shards_worker.capture import captured
from shards_worker.context import (
    AsyncProcessContext,
    ChildProcessFailed,
    ProcessContext,
    ProcessStopped,
    _ContextBase,
)
from shards_worker.definition import ProcessDefinition, WorkerApp
from shards_worker.forking import warm_up_quietly
from shards_worker.isolation import IsolatedRun, RunEnded
from shards_worker.link import ControllerLink
from shards_worker.log_buffer import BACKLOG_TICKS, LogBuffer, take_in_slices
from shards_worker.log_buffer import shipped as log_shipped
from shards_worker.metrics import WorkerGauges
from shards_worker.outbox import Outbox
from shards_worker.stream_ends import StreamEnds, end_message
from shards_worker.threads import signal_then_run

log = logging.getLogger(__name__)
S = ProcessState


class AppCallbackFailed(FailedPrecondition):
    """The app's ``get_scope_data`` or ``get_process_list`` raised: the scope cannot be served.

    FAILED_PRECONDITION on the wire, with the app's exception type and message:
    the controller shows it as it is (a define error, a failed run), never as a
    lost worker or an internal error.
    """


@dataclass(slots=True)
class _ActiveRun:
    run_id: str
    needs_slot: bool
    context: _ContextBase
    shipped: tuple[str, float] | None = None
    task: asyncio.Task[None] | None = None
    # The code has returned; the run stays listed until the controller has its end.
    ended: bool = False
    stop_grace_s: float = 10.0
    isolated: IsolatedRun | None = None
    # Thread mode: the code is still going stop_grace_s after the stop (1: to ship, 2: shipped).
    overdue: int = 0
    overdue_timer: asyncio.TimerHandle | None = None
    # The run's lines until the controller has stored them (its tail goes with the end).
    log: LogBuffer = field(default_factory=LogBuffer)
    stream: StreamEnds | None = None  # the ExecuteProcess stream it came on


@dataclass(slots=True)
class _Catalog:
    scope_data: Any
    definitions: dict[str, ProcessDefinition]
    loaded_at: float = field(default_factory=time.monotonic)


class Runner:
    """Executes runs for one worker."""

    def __init__(
        self,
        app: WorkerApp,
        link: ControllerLink,
        worker_id: str,
        capacity: int,
        progress_interval_s: float = 0.05,
        catalog_ttl_s: float = 5.0,
    ) -> None:
        self.app = app
        self.link = link
        self.worker_id = worker_id
        self.capacity = capacity
        self.progress_interval_s = progress_interval_s
        self.catalog_ttl_s = catalog_ttl_s
        self.loop = asyncio.get_running_loop()
        self._runs: dict[str, _ActiveRun] = {}
        # How many runs this incarnation has received, counted once each is in
        # _runs: a report that reads it first and lists _runs after lists them all.
        self.received = 0
        self._catalogs: dict[str, _Catalog] = {}
        self._adhoc: dict[tuple[str, str], ProcessDefinition] = {}
        # Children do not take a slot, so threads can outnumber the capacity.
        self._threads = ThreadPoolExecutor(max_workers=max(32, capacity * 4), thread_name_prefix="shards-run")
        self._closing = False
        self._outbox = Outbox(link.metrics)

    # ------------------------------------------------------------ definitions

    async def catalog(self, scope_id: str, refresh: bool = False) -> _Catalog:
        cached = self._catalogs.get(scope_id)
        if cached is not None and not refresh and time.monotonic() - cached.loaded_at < self.catalog_ttl_s:
            return cached

        def load() -> _Catalog:
            # The app's own callbacks: what they raise is the app's answer, told
            # as it is (type and message), never an internal error of ours.
            callback = "get_scope_data"
            try:
                scope_data = self.app.get_scope_data(scope_id)
                callback = "get_process_list"
                definitions = {d.process_id: d for d in self.app.get_process_list(scope_data)}
            except Exception as error:
                raise AppCallbackFailed(
                    f"{type(error).__name__}: {error} (raised by the app's {callback} for scope "
                    f"{scope_id!r} on worker {self.worker_id})"
                ) from error
            return _Catalog(scope_data, definitions)

        catalog = await self.loop.run_in_executor(self._threads, load)
        self._catalogs[scope_id] = catalog
        isolated = [d for d in catalog.definitions.values() if d.isolation == "process"]
        if isolated:  # the first isolated run need not wait for the fork server to start
            self.loop.run_in_executor(self._threads, warm_up_quietly, isolated[0].execute.__module__)
        return catalog

    async def describe(self, scope_id: str) -> list[ProcessInfo]:
        catalog = await self.catalog(scope_id, refresh=True)
        return [d.info for d in catalog.definitions.values()]

    # ------------------------------------------------------------ runs

    def running_ids(self) -> list[str]:
        return list(self._runs)

    def runs_received(self) -> int:
        return self.received

    def resend_logs(self) -> None:
        """After a (re-)registration or a broken stream: send again each run's lines not yet
        stored (a restarted or new controller may not have them), the latest progress, and
        an overdue stop (sent once otherwise: lost on the way, no record would ever say it)."""
        for run in self._runs.values():
            run.log.rewind()
            run.shipped = None
            run.overdue = min(run.overdue, 1)

    def logs_stored(self, stored: dict[str, int]) -> None:
        """From a heartbeat's reply: the lines of each run the controller has stored."""
        for run_id, offset in stored.items():
            run = self._runs.get(run_id)
            if run is not None:
                run.log.acked(offset)

    def run_name(self, run_id: str) -> str:
        """How logs name a run: its id and process (safe from any thread)."""
        run = self._runs.get(run_id)
        return f"run {run_id} (process {run.context.process_id!r})" if run is not None else f"run {run_id}"

    async def execute(
        self, request: pb.RunToExecute, stream: StreamEnds | None = None
    ) -> asyncio.Future[None] | None:
        """Start a run; for sync code, a future that is done once its thread has picked it up.
        ``stream``: the ExecuteProcess stream it came on, which may take its end back."""
        if request.run_id in self._runs:
            return None  # a retried dispatch
        if self._closing:
            raise Unavailable(f"worker {self.worker_id} is shutting down")
        needs_slot = not request.parent_run_id
        # A run whose code has returned holds no slot: the controller frees the
        # slot when it gets the end, and may hand it on before its answer to
        # FinishRun reaches us.
        if needs_slot and self._busy_slots() >= self.capacity:
            raise ResourceExhausted(f"worker {self.worker_id} is full ({self.capacity} runs)")
        catalog = await self.catalog(request.scope_id)
        definition = self._adhoc.get((request.scope_id, request.process_id)) or catalog.definitions.get(
            request.process_id
        )
        if definition is None:
            catalog = await self.catalog(request.scope_id, refresh=True)
            definition = catalog.definitions.get(request.process_id)
        if definition is None:
            raise NotFound(
                f"worker {self.worker_id} has no process {request.process_id!r} in scope {request.scope_id!r}"
            )
        is_async = inspect.iscoroutinefunction(definition.execute)
        isolated = definition.isolation == "process"
        context_class = AsyncProcessContext if is_async and not isolated else ProcessContext
        context = context_class(
            self, request.run_id, request.scope_id, request.process_id, catalog.scope_data
        )
        context.attempt = request.attempt or 1
        run = _ActiveRun(
            request.run_id, needs_slot, context, stop_grace_s=definition.stop_grace_s, stream=stream
        )
        self._runs[request.run_id] = run
        self.received += 1
        execution: Awaitable[Any]
        started: asyncio.Future[None] | None = None
        if isolated:
            assert isinstance(context, ProcessContext)
            run.isolated = IsolatedRun(self, definition, context, self.progress_interval_s)
            execution = run.isolated.execute()
        elif is_async:
            capture = context.log if definition.captures_output else None
            execution = captured(definition.execute(context), capture)  # type: ignore[arg-type]
        else:
            # Handed to a thread now, not on the run task's first turn.
            started = self.loop.create_future()
            execution = self.loop.run_in_executor(
                self._threads, signal_then_run, self.loop, started, definition, context
            )
        run.task = asyncio.create_task(self._run(run, execution), name=f"run-{request.run_id}")
        return started

    def gauges(self) -> WorkerGauges:
        """Runs in flight and slots now, for a scrape of ``/metrics``."""
        flying = [r for r in self._runs.values() if not r.ended]
        top = sum(1 for r in flying if r.needs_slot)
        return WorkerGauges(top, len(flying) - top, self.capacity, top)

    def _busy_slots(self) -> int:
        return sum(1 for r in self._runs.values() if r.needs_slot and not r.ended)

    async def _run(self, run: _ActiveRun, execution: Awaitable[Any]) -> None:
        context = run.context
        # This task's own context: its log lines (and an async process's) carry the run.
        set_run_context(run_id=context.run_id, scope_id=context.scope_id, process_id=context.process_id)
        state, error = S.DONE, ""
        try:
            await execution
        except ProcessStopped:
            state = S.STOPPED
        except RunEnded as ended:  # an isolated run's process ended by force, or died
            state, error = ended.state, ended.error
        except ChildProcessFailed as failure:
            state, error = S.FAILED, str(failure)
        except Exception as failure:
            state, error = S.FAILED, f"{type(failure).__name__}: {failure}"
            context.log("".join(traceback.format_exception(failure)).rstrip())
        if state is S.DONE and context._stop_requested:
            state = S.STOPPED
        if run.overdue_timer is not None:
            run.overdue_timer.cancel()
        if run.ended:
            return  # abandoned at shutdown: already reported
        run.ended = True
        # The end carries what is not yet stored, up to 900 KiB: a burst goes on the stream
        # first, and the end waits until what the stream must carry left the outbox.
        await log_shipped(run.log, context._logs, self.progress_interval_s)
        end = end_message(run.run_id, run.context, run.log, state, error)
        if end.log_offset > run.log.offset:
            await self._outbox.sent(self._outbox.put_count)
        if run.stream is not None and await run.stream.finish(end):
            self.link.metrics.ends.inc(("stream",))
        else:
            await self.link.finish_run(self.worker_id, end)
            self.link.metrics.ends.inc(("finish_run",))
        # Only now: until the controller has the end, heartbeats list the run,
        # so a new leader never takes a finished but unreported run for lost.
        self._runs.pop(run.run_id, None)

    def stop(self, run_id: str, grace_s: float | None = None) -> bool:
        """Ask a run to stop; ``grace_s`` (else its definition's ``stop_grace_s``) before it is
        forced (isolated) or shown overdue (in a thread)."""
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.context._stop_requested = True
        grace = run.stop_grace_s if grace_s is None else grace_s
        if run.isolated is not None:
            run.isolated.stop(grace)
        elif run.overdue_timer is None and not run.ended:
            run.overdue_timer = self.loop.call_later(grace, self._overdue, run, grace)
        return True

    def _overdue(self, run: _ActiveRun, grace_s: float) -> None:
        if run.ended or run.overdue:
            return
        run.overdue = 1
        run.context.log(
            f"the stop is overdue: the code did not return within {grace_s:g} s; {OVERDUE_ADVICE}"
        )

    async def run_child(
        self,
        parent: _ContextBase,
        child: ProcessDefinition | str,
        survive_failure: bool,
        survive_stopping: bool,
    ) -> ProcessState:
        definition = child if isinstance(child, ProcessDefinition) else None
        process_id = definition.process_id if definition is not None else str(child)
        if parent._stop_requested:
            raise ProcessStopped()
        if definition is not None:
            self._adhoc[(parent.scope_id, process_id)] = definition
        run_id = await self.link.launch_child(
            parent.scope_id,
            process_id,
            parent.run_id,
            parent._child_key(process_id),
            definition.info if definition is not None else None,
            self.worker_id if definition is not None else "",
        )
        run = await self.link.wait_run(run_id)  # its last attempt, when its definition retries it
        state = ProcessState.from_proto(run.state)
        if state in (S.FAILED, S.LOST) and not survive_failure:
            if parent._stop_requested:
                raise ProcessStopped()  # this stop cancelled the child's next attempts
            raise ChildProcessFailed(process_id, state, run.error)
        if state is S.STOPPED and not survive_stopping:
            raise ProcessStopped()
        return state

    # ------------------------------------------------------------ progress shipping

    def _collect(self, runs: list[_ActiveRun], ship_lines: bool = True) -> list[pb.RunEvent]:
        events = []
        for run in runs:
            context = run.context
            progress = context._progress
            run.log.take(context._logs)
            lines = run.log.line_events(run.run_id) if ship_lines else []
            overdue = run.overdue == 1
            if progress is run.shipped and not lines and not overdue:
                continue
            # Progress and the overdue flag ride on the first event of the run.
            event = lines[0] if lines else pb.RunEvent(run_id=run.run_id)
            event.stop_overdue = overdue
            if overdue:
                run.overdue = 2
            if progress is not run.shipped and progress is not None:
                event.progress.message = progress[0]
                event.progress.rate = progress[1]
                run.shipped = progress
            events.extend(lines or [event])
        return events

    async def ship_progress(self) -> None:
        """Collect progress every interval and keep one stream open to send it on."""
        collector = asyncio.create_task(self._collect_periodically())
        try:
            while True:
                try:
                    await self.link.push_events(self._outbox.drain())
                except grpc.aio.AioRpcError as error:  # the stream broke (controller restart, take-over)
                    log.debug("progress stream ended: %s", error.code().name)
                    self._outbox.end_stream()
                    self.resend_logs()  # what was in flight may be lost
                    if error.code() is grpc.StatusCode.UNAVAILABLE:
                        self.link.channel.redirect(error)
                await asyncio.sleep(0.1)
        finally:
            collector.cancel()

    async def _collect_periodically(self) -> None:
        backlog = False
        while True:
            await asyncio.sleep(self.progress_interval_s / (BACKLOG_TICKS if backlog else 1))
            try:
                backlog = await self._collect_once()
            except Exception:  # never let the shipping of every run's progress and lines die quietly
                log.exception("worker %s: collecting progress and log lines failed", self.worker_id)

    async def _collect_once(self) -> bool:
        """Ship what the runs reported; True when lines are left for the next tick."""
        await take_in_slices([(r.log, r.context._logs) for r in self._runs.values()])
        # A full outbox (no controller): lines wait in their buffers, and
        # only progress goes, the oldest batch dropped (newer progress supersedes it).
        ship_lines = not self._outbox.full
        events = self._collect(list(self._runs.values()), ship_lines=ship_lines)
        if events and self._outbox.put(pb.PushRunEventsRequest(worker_id=self.worker_id, events=events)):
            self.resend_logs()  # the batch dropped may have carried lines
        return ship_lines and any(r.log.backlog or r.context._logs for r in self._runs.values())

    # ------------------------------------------------------------ shutdown

    async def close(self, grace_s: float) -> None:
        """Stop accepting runs, ask running ones to stop, wait up to ``grace_s`` for them.

        A run still going after the grace is reported ``failed`` (with why) before
        the worker goes: the controller would otherwise call it ``lost`` once the
        heartbeats stop, when the worker knows exactly what happened.
        """
        self._closing = True
        tasks = [r.task for r in self._runs.values() if r.task is not None and r.isolated is None]
        for run in self._runs.values():
            run.context._stop_requested = True
        # Isolated runs take the same escalation as a stop (the grace at most the shutdown's),
        # so they are over, one way or the other, when it is.
        isolated = [r for r in self._runs.values() if r.isolated is not None and r.task is not None]
        for run in isolated:
            assert run.isolated is not None
            run.isolated.stop(min(grace_s, run.stop_grace_s), by_shutdown=True)
        waits = [asyncio.wait(tasks, timeout=grace_s)] if tasks else []
        if isolated:
            longest = max(r.isolated.escalation_s for r in isolated if r.isolated is not None)
            waits.append(asyncio.wait([r.task for r in isolated if r.task], timeout=longest + 2.0))
        if waits:
            await asyncio.gather(*waits)
        abandoned = [r for r in self._runs.values() if not r.ended]
        if abandoned:
            await self._abandon(abandoned, grace_s)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _abandon(self, runs: list[_ActiveRun], grace_s: float) -> None:
        error = f"worker shut down after {grace_s:g} s grace (the run did not stop when asked)"
        for run in runs:
            run.ended = True
            log.warning(
                "run %s (%s) did not stop within %g s; reporting it failed",
                run.run_id,
                run.context.process_id,
                grace_s,
                extra=run_fields(run.run_id, run.context.scope_id, run.context.process_id, self.worker_id),
            )
            if run.task is not None:
                run.task.cancel()  # its code may go on in its thread; its end is this one
        reports = [
            self.link.finish_run(self.worker_id, end_message(r.run_id, r.context, r.log, S.FAILED, error))
            for r in runs
        ]
        try:
            # Bounded: a controller that is gone must not hold the shutdown up.
            await asyncio.wait_for(asyncio.gather(*reports), timeout=5.0)
        except (TimeoutError, grpc.aio.AioRpcError) as failure:
            log.warning("could not report %d abandoned run(s): %s", len(runs), failure)
        for run in runs:
            self._runs.pop(run.run_id, None)
