"""The controller's gRPC servicers: ProcessController and WorkerRegistry.

Thin: validate the request, authorize the caller, call the Controller,
translate the reply. Errors become statuses in ``shards._grpc.status``.

Order of checks, so that a refused request changes nothing and tells nothing:
authentication (``AuthInterceptor``, before any of this), then the shape of the
request (INVALID_ARGUMENT), then the caller's right to the scope
(PERMISSION_DENIED), then the state (NOT_FOUND, FAILED_PRECONDITION).

Authorization, by RPC (SECURITY.md has the whole table):

- client calls need the action on the scope: ``list`` for ListProcesses,
  GetProcess, WatchProcesses, ListRuns and GetRun (on the run's scope);
  ``launch``, ``stop``, ``dismiss``, ``define``, ``purge`` for the rest (a
  launch carrying a definition needs ``define`` too). ListWorkers shows the
  workers whose every scope pattern the caller may list.
- a worker credential may call WorkerRegistry as the worker ids it holds, and
  ProcessController only to launch children of its own running runs (in their
  scope) and to read those runs and their children.
- a client credential may not call WorkerRegistry at all.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import grpc

from shards import validation as v
from shards._grpc.status import handle_errors, handle_stream_errors, status_of
from shards.convert import (
    duration_from_timedelta,
    info_from_proto,
    progress_from_proto,
    record_to_proto,
    run_to_proto,
    scope_summary_to_proto,
    watch_event_to_proto,
    worker_to_proto,
)
from shards.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from shards.models import ProcessFilter, Run, WatchEvent, WatchEventType
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards.states import ProcessState
from shards_controller import scopes
from shards_controller.auth import Action, Authorizer, Caller, Limits, Principal
from shards_controller.controller import Controller, LaunchRequest, RunEndReport

Context = grpc.aio.ServicerContext[Any, Any]
MAX_RUNS_PER_PAGE = 1000


def _filter(scope_id: str, name_contains: str, max_detail_level: int) -> ProcessFilter:
    v.check_id(scope_id, "scope_id")
    v.check_text(name_contains, "name_contains", v.MAX_NAME_LENGTH)
    if not 0 <= max_detail_level <= v.MAX_DETAIL_LEVEL:
        raise InvalidArgument(
            f"max_detail_level must be within 0..{v.MAX_DETAIL_LEVEL}, got {max_detail_level}"
        )
    return ProcessFilter(scope_id, name_contains, max_detail_level)


def _check_progress(progress: pb.Progress, what: str) -> None:
    v.check_rate(progress.rate)
    v.check_text(progress.message, f"{what}.message", v.MAX_MESSAGE_LENGTH)


def _check_run_ids(run_ids: Sequence[str], what: str) -> None:
    v.check_count(len(run_ids), what, v.MAX_RUN_IDS_PER_REPORT)
    for run_id in run_ids:
        v.check_id(run_id, what[:-1])


def _scoped_key(principal: Principal, key: str) -> str:
    # Idempotency keys are per principal: another principal's key can neither
    # return its run nor, in an error, name its scope and process.
    return key if principal.is_anonymous or not key else f"{principal.name}|{key}"


class _WatchEncoder:
    """Protobuf for watch events, made once per change and shared by every watcher.

    Live events of one change share its (immutable) record, so the costly part,
    converting the record, is cached by that record's identity; the cache
    keeps the record alive, so an id is never reused while cached.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._cache: OrderedDict[
            tuple[WatchEventType, int, int], tuple[object, pb.WatchProcessesResponse]
        ] = OrderedDict()

    def encode(self, event: WatchEvent) -> pb.WatchProcessesResponse:
        if event.process is None:
            return watch_event_to_proto(event)
        key = (event.type, event.revision, id(event.process))
        cached = self._cache.get(key)
        if cached is not None and cached[0] is event.process:
            return cached[1]
        message = watch_event_to_proto(event)
        self._cache[key] = (event.process, message)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return message


class ProcessControllerService(pb_grpc.ProcessControllerServicer):
    def __init__(
        self, controller: Controller, authorizer: Authorizer | None = None, limits: Limits | None = None
    ) -> None:
        self._c = controller
        self._auth = authorizer if authorizer is not None else Authorizer()
        self._limits = limits if limits is not None else Limits()
        self._watch_encoder = _WatchEncoder()
        self._launching: set[asyncio.Task[None]] = set()  # LaunchProcesses' launches under way

    async def _client(self, scope_id: str, action: Action) -> Caller:
        """The caller, once it is known to be a client allowed ``action`` in ``scope_id``."""
        caller = self._auth.caller()
        principal = caller.principal
        if principal.is_worker:
            raise PermissionDenied(
                f"{principal.name} holds a worker credential, which may not {action.value} in scopes: "
                "use a client token"
            )
        await self._auth.require(principal, scope_id, action)
        return caller

    async def _run_of_worker(self, principal: Principal, run: Run) -> bool:
        """A worker may read its own runs, and the children of its own runs."""
        if principal.may_act_as(run.worker_id):
            return True
        if not run.parent_run_id:
            return False
        try:
            parent = await self._c.get_run(run.parent_run_id, False)
        except NotFound:
            return False
        return principal.may_act_as(parent.worker_id)

    @handle_errors
    async def DefineProcesses(
        self, request: pb.DefineProcessesRequest, context: Context
    ) -> pb.DefineProcessesResponse:
        v.check_id(request.scope_id, "scope_id")
        await self._client(request.scope_id, Action.DEFINE)
        records = await self._c.define_processes(request.scope_id, request.only_if_missing, request.clean)
        return pb.DefineProcessesResponse(processes=[record_to_proto(r) for r in records])

    @handle_errors
    async def PurgeProcesses(
        self, request: pb.PurgeProcessesRequest, context: Context
    ) -> pb.PurgeProcessesResponse:
        v.check_id(request.scope_id, "scope_id")
        await self._client(request.scope_id, Action.PURGE)
        return pb.PurgeProcessesResponse(purged=await self._c.purge_processes(request.scope_id))

    @handle_errors
    async def ListProcesses(
        self, request: pb.ListProcessesRequest, context: Context
    ) -> pb.ListProcessesResponse:
        process_filter = _filter(request.scope_id, request.name_contains, request.max_detail_level)
        await self._client(request.scope_id, Action.LIST)
        records, revision = self._c.list_processes(process_filter)
        return pb.ListProcessesResponse(processes=[record_to_proto(r) for r in records], revision=revision)

    @handle_errors
    async def GetProcess(self, request: pb.GetProcessRequest, context: Context) -> pb.GetProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        await self._client(request.scope_id, Action.LIST)
        return pb.GetProcessResponse(
            process=record_to_proto(self._c.get_process(request.scope_id, request.process_id))
        )

    @handle_stream_errors
    async def WatchProcesses(
        self, request: pb.WatchProcessesRequest, context: Context
    ) -> AsyncIterator[pb.WatchProcessesResponse]:
        process_filter = _filter(request.scope_id, request.name_contains, request.max_detail_level)
        if request.from_revision < 0:
            raise InvalidArgument(f"from_revision must not be negative, got {request.from_revision}")
        caller = await self._client(request.scope_id, Action.LIST)
        with self._limits.watcher(caller.limit_key):
            async for event in self._c.watch(process_filter, request.from_revision):
                yield self._watch_encoder.encode(event)

    @handle_errors
    async def LaunchProcess(
        self, request: pb.LaunchProcessRequest, context: Context
    ) -> pb.LaunchProcessResponse:
        return await self._launch(request)

    @handle_stream_errors
    async def LaunchProcesses(
        self, requests: AsyncIterator[pb.LaunchProcessesRequest], context: Context
    ) -> AsyncIterator[pb.LaunchProcessesResponse]:
        # Each launch runs in a task of its own, as a LaunchProcess call would:
        # launches complete in any order, and one that has begun completes
        # even if the stream goes (only its answer is lost). The results done
        # while an answer is being written leave together in the next one.
        results: list[pb.TaggedLaunchResult] = []
        ready = asyncio.Event()
        limit_key = self._auth.caller().limit_key
        begun = answered = 0
        read_all = False

        async def launch(tagged: pb.TaggedLaunch) -> None:
            result = pb.TaggedLaunchResult(request_id=tagged.request_id)
            try:
                with self._limits.in_flight(limit_key):
                    if not tagged.HasField("launch"):
                        raise InvalidArgument("launch is required")
                    result.launched.CopyFrom(await self._launch(tagged.launch))
            except Exception as error:
                code, text, leader = status_of(error, "LaunchProcesses")
                result.failed.CopyFrom(pb.LaunchFailure(code=code.value[0], message=text, leader=leader))
            except asyncio.CancelledError:
                code, text = grpc.StatusCode.UNAVAILABLE, "the launch was interrupted; retry it"
                result.failed.CopyFrom(pb.LaunchFailure(code=code.value[0], message=text))
                raise
            finally:
                results.append(result)  # never left unanswered: the caller would wait out its deadline
                ready.set()

        async def read() -> None:
            nonlocal begun, read_all
            try:
                async for message in requests:
                    v.check_range(len(message.launches), "the number of launches", 1, v.MAX_RUNS_PER_BATCH)
                    for tagged in message.launches:
                        begun += 1
                        task = asyncio.create_task(launch(tagged))
                        self._launching.add(task)
                        task.add_done_callback(self._launching.discard)
            finally:
                read_all = True  # the caller has closed its side, or sent a malformed message
                ready.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                while results:
                    batch = results[: v.MAX_RUNS_PER_BATCH]
                    del results[: len(batch)]
                    answered += len(batch)
                    yield pb.LaunchProcessesResponse(results=batch)
                if read_all:
                    await reader  # raises what ended the reading (a malformed message)
                    if answered == begun:
                        break
                await ready.wait()
                ready.clear()
        finally:
            reader.cancel()

    async def _launch(self, request: pb.LaunchProcessRequest) -> pb.LaunchProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        v.check_text(request.idempotency_key, "idempotency_key", v.MAX_IDEMPOTENCY_KEY_LENGTH)
        v.check_optional_id(request.parent_run_id, "parent_run_id")
        v.check_optional_id(request.preferred_worker_id, "preferred_worker_id")
        definition = None
        if request.HasField("definition"):
            if request.definition.process_id not in ("", request.process_id):
                raise InvalidArgument("definition.process_id differs from process_id")
            v.check_text(request.definition.name, "definition.name", v.MAX_NAME_LENGTH)
            v.check_text(request.definition.warning, "definition.warning", v.MAX_MESSAGE_LENGTH)
            v.check_detail_level(request.definition.detail_level)
            definition = info_from_proto(request.definition)
        principal = await self._authorize_launch(request)
        outcome = await self._c.launch(
            LaunchRequest(
                scope_id=request.scope_id,
                process_id=request.process_id,
                idempotency_key=_scoped_key(principal, request.idempotency_key),
                parent_run_id=request.parent_run_id,
                definition=definition,
                preferred_worker_id=request.preferred_worker_id,
            )
        )
        return pb.LaunchProcessResponse(
            run_id=outcome.run_id, process=record_to_proto(outcome.process), deduplicated=outcome.deduplicated
        )

    async def _authorize_launch(self, request: pb.LaunchProcessRequest) -> Principal:
        principal = self._auth.caller().principal
        if principal.is_anonymous:
            return principal
        if not principal.is_worker:
            await self._auth.require(principal, request.scope_id, Action.LAUNCH)
            if request.HasField("definition"):
                await self._auth.require(principal, request.scope_id, Action.DEFINE)
            if request.parent_run_id:
                raise PermissionDenied("only the worker running a process launches its children")
            return principal
        if not request.parent_run_id:
            raise PermissionDenied(
                f"{principal.name} holds a worker credential, which launches only children of its own runs"
            )
        try:
            parent = await self._c.get_run(request.parent_run_id, False)
        except NotFound:
            raise FailedPrecondition(f"parent run {request.parent_run_id!r} is not running") from None
        if not principal.may_act_as(parent.worker_id):
            raise PermissionDenied(f"parent run {request.parent_run_id!r} is not a run of {principal.name}")
        if parent.scope_id != request.scope_id:
            raise PermissionDenied("a child process runs in the scope of its parent")
        return principal

    @handle_errors
    async def StopProcess(self, request: pb.StopProcessRequest, context: Context) -> pb.StopProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        await self._client(request.scope_id, Action.STOP)
        record = await self._c.stop_process(request.scope_id, request.process_id)
        return pb.StopProcessResponse(process=record_to_proto(record))

    @handle_errors
    async def DismissProcessMessages(
        self, request: pb.DismissProcessMessagesRequest, context: Context
    ) -> pb.DismissProcessMessagesResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        await self._client(request.scope_id, Action.DISMISS)
        record = await self._c.dismiss_messages(request.scope_id, request.process_id)
        return pb.DismissProcessMessagesResponse(process=record_to_proto(record))

    @handle_errors
    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Context) -> pb.ListWorkersResponse:
        principal = self._auth.caller().principal
        if principal.is_worker:
            raise PermissionDenied(f"{principal.name} holds a worker credential, which may not list workers")
        workers = self._c.list_workers()
        visible = [w for w in workers if await self._auth.may_see_worker(principal, w.scopes)]
        return pb.ListWorkersResponse(workers=[worker_to_proto(w) for w in visible])

    @handle_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_optional_id(request.process_id, "process_id")
        if not 0 <= request.limit <= MAX_RUNS_PER_PAGE:
            raise InvalidArgument(f"limit must be within 0..{MAX_RUNS_PER_PAGE}, got {request.limit}")
        await self._client(request.scope_id, Action.LIST)
        runs = await self._c.list_runs(request.scope_id, request.process_id, request.limit)
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs])

    @handle_errors
    async def ListScopes(self, request: pb.ListScopesRequest, context: Context) -> pb.ListScopesResponse:
        principal = self._auth.caller().principal
        visible = await scopes.visible_scopes(self._auth, principal, self._c.list_scopes())
        return pb.ListScopesResponse(scopes=[scope_summary_to_proto(s) for s in visible])

    @handle_errors
    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Context) -> pb.WhoAmIResponse:
        return await scopes.who_am_i(self._auth, self._auth.caller().principal, request.scope_id)

    @handle_errors
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        v.check_id(request.run_id, "run_id")
        principal = self._auth.caller().principal
        run = await self._c.get_run(request.run_id, False)
        if principal.is_worker:
            if not await self._run_of_worker(principal, run):
                raise PermissionDenied(
                    f"run {request.run_id!r} is neither a run of {principal.name} nor a child"
                )
        else:
            await self._auth.require(principal, run.scope_id, Action.LIST)
        if request.wait_until_ended and run.state.is_active:
            run = await self._c.get_run(request.run_id, True)
        return pb.GetRunResponse(run=run_to_proto(run))


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
            request.worker_id, request.incarnation, set(request.running_run_ids)
        )
        return pb.HeartbeatResponse(registered=registered)

    @handle_errors
    async def PushRunEvents(
        self, request_iterator: AsyncIterator[pb.PushRunEventsRequest], context: Context
    ) -> pb.PushRunEventsResponse:
        principal = self._worker()
        async for batch in request_iterator:
            v.check_id(batch.worker_id, "worker_id")
            v.check_count(len(batch.events), "events in a batch", v.MAX_EVENTS_PER_BATCH)
            for event in batch.events:
                v.check_id(event.run_id, "run_id")
                if event.HasField("progress"):
                    _check_progress(event.progress, "progress")
                v.check_lines(event.log_lines, "log_lines")
            self._acts_as(principal, batch.worker_id)
            # The whole batch is checked before any of it is applied.
            for event in batch.events:
                await self._owned(batch.worker_id, event.run_id)
            self._c.push_events(batch.worker_id, batch.events)
        return pb.PushRunEventsResponse()

    @handle_errors
    async def FinishRun(self, request: pb.FinishRunRequest, context: Context) -> pb.FinishRunResponse:
        principal = self._worker()
        v.check_id(request.worker_id, "worker_id")
        v.check_range(len(request.ends), "the number of ends", 1, v.MAX_RUNS_PER_BATCH)
        ends = [_run_end_from_proto(end) for end in request.ends]
        self._acts_as(principal, request.worker_id)
        # The whole batch is checked before any of it is applied.
        for end in ends:
            if not await self._owned(request.worker_id, end.run_id):
                raise NotFound(f"run {end.run_id!r} does not exist")
        await self._c.finish_runs(request.worker_id, ends)
        return pb.FinishRunResponse()


def _run_end_from_proto(end: pb.RunEnd) -> RunEndReport:
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
    return RunEndReport(end.run_id, state, end.error, progress, tuple(end.log_lines))
