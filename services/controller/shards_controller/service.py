"""The ProcessController servicer (its launches: ``launch_service``; WorkerRegistry: ``registry_service``).

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
  launch carrying a definition needs ``define`` too; ResetProcesses needs
  ``purge`` and ``define``). The first ListProcesses or WatchProcesses of a
  scope with no records defines it (the workers' own list), on ``list``. ListWorkers shows the
  workers whose every scope pattern the caller may list.
- a worker credential may call WorkerRegistry as the worker ids it holds, and
  ProcessController only to launch children of its own running runs (in their
  scope) and to read those runs and their children.
- a client credential may not call WorkerRegistry at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shards import search
from shards import validation as v
from shards._grpc.status import handle_errors, handle_stream_errors
from shards.convert import (
    record_to_proto,
    run_to_proto,
    schedule_to_proto,
    scope_summary_to_proto,
    watch_event_to_proto,
    worker_to_proto,
)
from shards.errors import InvalidArgument, NotFound, PermissionDenied
from shards.models import ProcessFilter, Run, ScheduleInfo, WatchEvent, WatchEventType
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller import paging, scopes
from shards_controller.auth import Action, Authorizer, Caller, Limits, Principal
from shards_controller.controller import Controller
from shards_controller.launch_service import Launches
from shards_controller.run_logs import MAX_PAGE_LINES

Context = grpc.aio.ServicerContext[Any, Any]


def _filter(request: pb.ListProcessesRequest | pb.WatchProcessesRequest) -> ProcessFilter:
    v.check_id(request.scope_id, "scope_id")
    v.check_text(request.name_contains, "name_contains", v.MAX_NAME_LENGTH)
    if not 0 <= request.max_detail_level <= v.MAX_DETAIL_LEVEL:
        raise InvalidArgument(
            f"max_detail_level must be within 0..{v.MAX_DETAIL_LEVEL}, got {request.max_detail_level}"
        )
    if request.name_regex:
        search.compile_pattern(request.name_regex)  # INVALID_ARGUMENT, with the engine's message
    return ProcessFilter(
        request.scope_id,
        request.name_contains,
        request.max_detail_level,
        name_regex=request.name_regex,
        hide_special=request.hide_special,
        active_only=request.active_only,
    )


def _check_log_request(offset: int, limit: int) -> None:
    if offset < 0:
        raise InvalidArgument(f"offset {offset} is out of range: offsets start at 0")
    if not 0 <= limit <= MAX_PAGE_LINES:
        raise InvalidArgument(f"limit must be within 0..{MAX_PAGE_LINES} lines, got {limit}")


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
        self._launches = Launches(controller, self._auth, self._limits)

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
        result = await self._c.define_processes(request.scope_id, request.only_if_missing, request.clean)
        page, token = paging.process_page(
            request.scope_id, list(result.processes), "", paging.DEFAULT_PROCESS_PAGE, full=False
        )
        return pb.DefineProcessesResponse(
            processes=page,
            next_page_token=token,
            added=result.added,
            removed=result.removed,
            kept=result.kept,
            wiped=result.wiped,
        )

    @handle_errors
    async def ResetProcesses(
        self, request: pb.ResetProcessesRequest, context: Context
    ) -> pb.ResetProcessesResponse:
        v.check_id(request.scope_id, "scope_id")
        caller = await self._client(request.scope_id, Action.PURGE)  # a reset is a purge and a define
        await self._auth.require(caller.principal, request.scope_id, Action.DEFINE)
        result = await self._c.reset_processes(request.scope_id)
        page, token = paging.process_page(
            request.scope_id, list(result.processes), "", paging.DEFAULT_PROCESS_PAGE, full=False
        )
        return pb.ResetProcessesResponse(
            processes=page,
            next_page_token=token,
            added=result.added,
            removed=result.removed,
            wiped=result.wiped,
        )

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
        process_filter = _filter(request)
        size = paging.page_size(request.page_size, paging.DEFAULT_PROCESS_PAGE)
        full = paging.check_view(request.view)
        paging.decode_token(request.page_token, "processes", request.scope_id)  # its shape, before the right
        await self._client(request.scope_id, Action.LIST)
        await self._c.first_view(request.scope_id)
        records, revision = self._c.list_processes(process_filter)
        page, token = paging.process_page(request.scope_id, records, request.page_token, size, full)
        return pb.ListProcessesResponse(processes=page, revision=revision, next_page_token=token)

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
        process_filter = _filter(request)
        if request.from_revision < 0:
            raise InvalidArgument(f"from_revision must not be negative, got {request.from_revision}")
        caller = await self._client(request.scope_id, Action.LIST)
        if not request.from_revision:
            await self._c.first_view(request.scope_id)
        with self._limits.watcher(caller.limit_key):
            async for event in self._c.watch(process_filter, request.from_revision):
                yield self._watch_encoder.encode(event)

    @handle_errors
    async def LaunchProcess(
        self, request: pb.LaunchProcessRequest, context: Context
    ) -> pb.LaunchProcessResponse:
        return await self._launches.launch(request)

    @handle_stream_errors
    def LaunchProcesses(
        self, requests: AsyncIterator[pb.LaunchProcessesRequest], context: Context
    ) -> AsyncIterator[pb.LaunchProcessesResponse]:
        return self._launches.stream(requests)  # iterated by handle_stream_errors, as a generator here was

    @handle_errors
    async def StopProcess(self, request: pb.StopProcessRequest, context: Context) -> pb.StopProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        grace = None
        if request.HasField("stop_grace"):
            grace = v.check_seconds(request.stop_grace.ToTimedelta().total_seconds(), "stop_grace")
        await self._client(request.scope_id, Action.STOP)
        record = await self._c.stop_process(request.scope_id, request.process_id, grace)
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
        limit = paging.page_size(request.limit, paging.DEFAULT_RUN_PAGE, "limit")
        size = paging.page_size(request.page_size, limit)
        full = paging.check_view(request.view)
        after = paging.run_position(request.page_token, request.scope_id, request.process_id)
        await self._client(request.scope_id, Action.LIST)
        # One more than the page: whether there is a next page is known without another read.
        runs = await self._c.list_runs(request.scope_id, request.process_id, size + 1, after)
        page, token = paging.run_page(request.scope_id, request.process_id, runs, size, full)
        return pb.ListRunsResponse(runs=page, next_page_token=token)

    @handle_errors
    async def ListScopes(self, request: pb.ListScopesRequest, context: Context) -> pb.ListScopesResponse:
        principal = self._auth.caller().principal
        visible = await scopes.visible_scopes(self._auth, principal, self._c.list_scopes())
        return pb.ListScopesResponse(scopes=[scope_summary_to_proto(s) for s in visible])

    @handle_errors
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        v.check_id(request.scope_id, "scope_id")
        await self._client(request.scope_id, Action.LIST)
        schedules = self._c.list_schedules(request.scope_id)
        return pb.ListSchedulesResponse(schedules=[schedule_to_proto(s) for s in schedules])

    @handle_errors
    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        info = await self._set_paused(request.scope_id, request.process_id, True)
        return pb.PauseScheduleResponse(schedule=schedule_to_proto(info))

    @handle_errors
    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        info = await self._set_paused(request.scope_id, request.process_id, False)
        return pb.ResumeScheduleResponse(schedule=schedule_to_proto(info))

    async def _set_paused(self, scope_id: str, process_id: str, paused: bool) -> ScheduleInfo:
        v.check_id(scope_id, "scope_id")
        v.check_id(process_id, "process_id")
        await self._client(scope_id, Action.LAUNCH)  # who may launch decides when it launches
        return await self._c.set_schedule_paused(scope_id, process_id, paused)

    @handle_errors
    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Context) -> pb.WhoAmIResponse:
        return await scopes.who_am_i(self._auth, self._auth.caller().principal, request.scope_id)

    @handle_errors
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        run = await self._readable_run(request.run_id)
        if request.wait_until_ended and (run.state.is_active or request.follow_retries):
            run = await self._c.get_run(request.run_id, True, follow_retries=request.follow_retries)
        return pb.GetRunResponse(run=run_to_proto(run))

    async def _readable_run(self, run_id: str) -> Run:
        """The run, if the caller may read it (LIST on its scope; a worker: its own runs)."""
        v.check_id(run_id, "run_id")
        principal = self._auth.caller().principal
        # A run the caller may not read is answered as one that does not
        # exist, in the same words: the answer tells nobody which run ids exist.
        unknown = NotFound(f"run {run_id!r} does not exist")
        try:
            run = await self._c.get_run(run_id, False)
        except NotFound:
            raise unknown from None
        if principal.is_worker:
            if not await self._run_of_worker(principal, run):
                raise unknown
        elif not await self._auth.allowed(principal, run.scope_id, Action.LIST):
            raise unknown
        return run

    @handle_errors
    async def GetRunLog(self, request: pb.GetRunLogRequest, context: Context) -> pb.GetRunLogResponse:
        _check_log_request(request.offset, request.limit)
        run = await self._readable_run(request.run_id)
        page = await self._c.get_run_log(run, request.offset, request.limit)
        return pb.GetRunLogResponse(
            lines=page.lines,
            offset=page.offset,
            next_offset=page.next_offset,
            end_offset=page.end,
            dropped=page.dropped,
            ended=page.ended,
        )

    @handle_stream_errors
    async def FollowRunLog(
        self, request: pb.FollowRunLogRequest, context: Context
    ) -> AsyncIterator[pb.FollowRunLogResponse]:
        _check_log_request(request.offset, 0)
        run = await self._readable_run(request.run_id)
        # A follower is a long-lived stream, as a watch: it counts among the caller's watches.
        with self._limits.watcher(self._auth.caller().limit_key):
            async for page in self._c.follow_run_log(run.run_id, request.offset):
                yield pb.FollowRunLogResponse(
                    lines=page.lines, offset=page.offset, next_offset=page.next_offset, dropped=page.dropped
                )
