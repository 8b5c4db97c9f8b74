"""The WorkerRegistry servicer: workers register, heartbeat, push their runs' events and ends.

A worker credential acts only as the worker ids it holds and serves only its
scope patterns; a client token may not call WorkerRegistry at all. A batch
(events, ends) is checked whole before any of it is applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import grpc

from shards import validation as v
from shards._grpc.status import handle_errors
from shards.convert import duration_from_timedelta, progress_from_proto
from shards.errors import InvalidArgument, NotFound, PermissionDenied
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards.states import ProcessState
from shards_controller.auth import Authorizer, Principal
from shards_controller.controller import Controller, RunEndReport

Context = grpc.aio.ServicerContext[Any, Any]


def _check_progress(progress: pb.Progress, what: str) -> None:
    v.check_rate(progress.rate)
    v.check_text(progress.message, f"{what}.message", v.MAX_MESSAGE_LENGTH)


def _check_run_ids(run_ids: Sequence[str], what: str) -> None:
    v.check_count(len(run_ids), what, v.MAX_RUN_IDS_PER_REPORT)
    for run_id in run_ids:
        v.check_id(run_id, what[:-1])


def _check_worker_key(key: str) -> None:
    """A worker's key travels as a header: printable, no spaces, at most 256 characters."""
    if key and (len(key) > 256 or any(c.isspace() for c in key) or not key.isprintable()):
        raise InvalidArgument("worker_key must be at most 256 printable characters without spaces")


# The lines of an end not yet acknowledged stored: at most a run's cap, and 1 MiB by the worker's fit.
MAX_LOG_REST_LINES = 1_000_000

_END_STATES = {
    pb.PROCESS_STATE_DONE: ProcessState.DONE,
    pb.PROCESS_STATE_FAILED: ProcessState.FAILED,
    pb.PROCESS_STATE_STOPPED: ProcessState.STOPPED,
}


class WorkerRegistryService(pb_grpc.WorkerRegistryServicer):
    def __init__(self, controller: Controller, authorizer: Authorizer | None = None) -> None:
        self._c = controller
        self._auth = authorizer if authorizer is not None else Authorizer()

    def _worker(self) -> Principal:
        """The caller, once it is known to hold a worker credential (or auth is off)."""
        principal = self._auth.caller().principal
        if not (principal.is_worker or principal.is_anonymous):
            raise PermissionDenied(
                f"{principal.name} holds a client token; WorkerRegistry takes worker credentials only"
            )
        return principal

    @staticmethod
    def _acts_as(principal: Principal, worker_id: str) -> None:
        if not principal.may_act_as(worker_id):
            raise PermissionDenied(f"{principal.name} may not act as worker {worker_id!r}")

    async def _owned(self, worker_id: str, run_id: str) -> bool:
        """Whether the run exists; PERMISSION_DENIED if another worker runs it."""
        owner = await self._c.run_worker(run_id)
        if owner is not None and owner != worker_id:
            raise PermissionDenied(f"run {run_id!r} is not run by worker {worker_id!r}")
        return owner is not None

    @handle_errors
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.RegisterWorkerResponse:
        principal = self._worker()
        v.check_id(request.worker_id, "worker_id")
        v.check_address(request.address)
        v.check_range(request.capacity, "capacity", 1, v.MAX_CAPACITY)
        v.check_count(len(request.scopes), "scope patterns", v.MAX_SCOPE_PATTERNS)
        for pattern in request.scopes:
            v.check_scope_pattern(pattern)
        _check_run_ids(request.running_run_ids, "running_run_ids")
        v.check_text(request.incarnation, "incarnation", v.MAX_ID_LENGTH)
        _check_worker_key(request.worker_key)
        self._acts_as(principal, request.worker_id)
        scopes = tuple(request.scopes) or ("*",)
        for pattern in scopes:
            if not principal.may_serve(pattern):
                raise PermissionDenied(f"{principal.name} may not serve the scopes {pattern!r}")
        await self._c.register_worker(
            request.worker_id,
            request.address,
            request.capacity,
            scopes,
            set(request.running_run_ids),
            request.incarnation,
            request.worker_key,
            request.runs_received if request.HasField("runs_received") else None,
        )
        return pb.RegisterWorkerResponse(
            heartbeat_interval=duration_from_timedelta(
                timedelta(seconds=self._c.config.heartbeat_interval_s)
            ),
            controller_id=self._c.config.controller_id,
        )

    @handle_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        principal = self._worker()
        v.check_id(request.worker_id, "worker_id")
        _check_run_ids(request.running_run_ids, "running_run_ids")
        v.check_text(request.incarnation, "incarnation", v.MAX_ID_LENGTH)
        self._acts_as(principal, request.worker_id)
        registered = await self._c.heartbeat(
            request.worker_id,
            request.incarnation,
            set(request.running_run_ids),
            request.runs_received if request.HasField("runs_received") else None,
        )
        stored = self._c.log_stored(request.running_run_ids) if registered else {}
        return pb.HeartbeatResponse(registered=registered, log_stored=stored)

    @handle_errors
    async def PushRunEvents(
        self, request_iterator: AsyncIterator[pb.PushRunEventsRequest], context: Context
    ) -> pb.PushRunEventsResponse:
        principal = self._worker()
        async for batch in request_iterator:
            v.check_id(batch.worker_id, "worker_id")
            v.check_count(len(batch.events), "events in a batch", v.MAX_EVENTS_PER_BATCH)
            # Each event's lines made Python strings once, checked and used as such.
            events = [(event, list(event.log_lines)) for event in batch.events]
            for event, lines in events:
                v.check_id(event.run_id, "run_id")
                if event.HasField("progress"):
                    _check_progress(event.progress, "progress")
                v.check_lines(lines, "log_lines")
                if event.log_offset < 0:
                    raise InvalidArgument(f"log_offset must be 0 or more, got {event.log_offset}")
            self._acts_as(principal, batch.worker_id)
            # The whole batch is checked before any of it is applied.
            for event in batch.events:
                await self._owned(batch.worker_id, event.run_id)
            self._c.push_events(batch.worker_id, events)
        return pb.PushRunEventsResponse()

    @handle_errors
    async def FinishRun(self, request: pb.FinishRunRequest, context: Context) -> pb.FinishRunResponse:
        principal = self._worker()
        v.check_id(request.worker_id, "worker_id")
        ends = self._reports_of(request.ends)
        self._acts_as(principal, request.worker_id)
        await self._finish(request.worker_id, ends)
        return pb.FinishRunResponse()

    async def ends_on_stream(self, worker_id: str, ends: Sequence[pb.RunEnd]) -> None:
        """Ends a worker sent back on its ExecuteProcess stream: applied as FinishRun applies them."""
        await self._finish(worker_id, self._reports_of(ends))

    def _reports_of(self, ends: Sequence[pb.RunEnd]) -> list[RunEndReport]:
        v.check_range(len(ends), "the number of ends", 1, v.MAX_RUNS_PER_BATCH)
        return [_run_end_from_proto(end, self._c.log_received(end.run_id)) for end in ends]

    async def _finish(self, worker_id: str, ends: list[RunEndReport]) -> None:
        # The whole batch is checked before any of it is applied.
        for end in ends:
            if not await self._owned(worker_id, end.run_id):
                raise NotFound(f"run {end.run_id!r} does not exist")
        await self._c.finish_runs(worker_id, ends)


def _run_end_from_proto(end: pb.RunEnd, received: int) -> RunEndReport:
    """``received``: the lines of the run's log the controller has (0: unknown)."""
    v.check_id(end.run_id, "run_id")
    state = _END_STATES.get(end.state)
    if state is None:
        raise InvalidArgument(
            "state must be PROCESS_STATE_DONE, PROCESS_STATE_FAILED or PROCESS_STATE_STOPPED"
        )
    v.check_text(end.error, "error", v.MAX_ERROR_LENGTH)
    progress = None
    if end.HasField("progress"):
        _check_progress(end.progress, "progress")
        progress = progress_from_proto(end.progress)
    v.check_lines(end.log_lines, "log_lines")
    rest = _log_rest(end, received)
    offset = end.log_offset + (len(end.log_rest) - len(rest)) if end.log_total else None
    return RunEndReport(end.run_id, state, end.error, progress, tuple(end.log_lines), tuple(rest), offset)


def _log_rest(end: pb.RunEnd, received: int) -> list[str]:
    """The lines of ``end.log_rest`` from the first the controller has not ``received``.

    An end carries the run's newest lines not yet acknowledged stored, up to
    ~900 KB (~20,000 usual lines), most of which came on the event stream
    already: only the others are made Python strings (and checked), so the end
    of a burst costs the controller's loop what is new in it, not 15 ms.
    """
    v.check_count(len(end.log_rest), "log_rest lines", MAX_LOG_REST_LINES)
    if end.log_offset < 0 or end.log_total < end.log_offset + len(end.log_rest):
        raise InvalidArgument(
            f"log_offset {end.log_offset} and {len(end.log_rest)} lines do not fit log_total {end.log_total}"
        )
    rest = end.log_rest[min(len(end.log_rest), max(0, received - end.log_offset)) :]
    if rest and max(map(len, rest)) > v.MAX_LOG_LINE_LENGTH:
        for line in rest:
            v.check_text(line, "log_rest line", v.MAX_LOG_LINE_LENGTH)
    return rest
