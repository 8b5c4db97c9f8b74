"""The controller's gRPC servicers: ProcessController and WorkerRegistry.

Thin: validate and translate the request, call the Controller, translate the
reply. Errors become statuses in ``shards._grpc.status``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc

from shards import validation as v
from shards._grpc.status import handle_errors, handle_stream_errors
from shards.convert import (
    duration_from_timedelta,
    info_from_proto,
    progress_from_proto,
    record_to_proto,
    run_to_proto,
    watch_event_to_proto,
    worker_to_proto,
)
from shards.errors import InvalidArgument
from shards.models import ProcessFilter
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards.states import ProcessState
from shards_controller.controller import Controller, LaunchRequest

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


class ProcessControllerService(pb_grpc.ProcessControllerServicer):
    def __init__(self, controller: Controller) -> None:
        self._c = controller

    @handle_errors
    async def DefineProcesses(
        self, request: pb.DefineProcessesRequest, context: Context
    ) -> pb.DefineProcessesResponse:
        v.check_id(request.scope_id, "scope_id")
        records = await self._c.define_processes(request.scope_id, request.only_if_missing, request.clean)
        return pb.DefineProcessesResponse(processes=[record_to_proto(r) for r in records])

    @handle_errors
    async def PurgeProcesses(
        self, request: pb.PurgeProcessesRequest, context: Context
    ) -> pb.PurgeProcessesResponse:
        v.check_id(request.scope_id, "scope_id")
        return pb.PurgeProcessesResponse(purged=await self._c.purge_processes(request.scope_id))

    @handle_errors
    async def ListProcesses(
        self, request: pb.ListProcessesRequest, context: Context
    ) -> pb.ListProcessesResponse:
        process_filter = _filter(request.scope_id, request.name_contains, request.max_detail_level)
        records, revision = self._c.list_processes(process_filter)
        return pb.ListProcessesResponse(processes=[record_to_proto(r) for r in records], revision=revision)

    @handle_errors
    async def GetProcess(self, request: pb.GetProcessRequest, context: Context) -> pb.GetProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
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
        async for event in self._c.watch(process_filter, request.from_revision):
            yield watch_event_to_proto(event)

    @handle_errors
    async def LaunchProcess(
        self, request: pb.LaunchProcessRequest, context: Context
    ) -> pb.LaunchProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        v.check_text(request.idempotency_key, "idempotency_key", v.MAX_NAME_LENGTH)
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
        outcome = await self._c.launch(
            LaunchRequest(
                scope_id=request.scope_id,
                process_id=request.process_id,
                idempotency_key=request.idempotency_key,
                parent_run_id=request.parent_run_id,
                definition=definition,
                preferred_worker_id=request.preferred_worker_id,
            )
        )
        return pb.LaunchProcessResponse(
            run_id=outcome.run_id, process=record_to_proto(outcome.process), deduplicated=outcome.deduplicated
        )

    @handle_errors
    async def StopProcess(self, request: pb.StopProcessRequest, context: Context) -> pb.StopProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        record = await self._c.stop_process(request.scope_id, request.process_id)
        return pb.StopProcessResponse(process=record_to_proto(record))

    @handle_errors
    async def DismissProcessMessages(
        self, request: pb.DismissProcessMessagesRequest, context: Context
    ) -> pb.DismissProcessMessagesResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        record = await self._c.dismiss_messages(request.scope_id, request.process_id)
        return pb.DismissProcessMessagesResponse(process=record_to_proto(record))

    @handle_errors
    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Context) -> pb.ListWorkersResponse:
        return pb.ListWorkersResponse(workers=[worker_to_proto(w) for w in self._c.list_workers()])

    @handle_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_optional_id(request.process_id, "process_id")
        if not 0 <= request.limit <= MAX_RUNS_PER_PAGE:
            raise InvalidArgument(f"limit must be within 0..{MAX_RUNS_PER_PAGE}, got {request.limit}")
        runs = await self._c.list_runs(request.scope_id, request.process_id, request.limit)
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs])

    @handle_errors
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        v.check_id(request.run_id, "run_id")
        run = await self._c.get_run(request.run_id, request.wait_until_ended)
        return pb.GetRunResponse(run=run_to_proto(run))


_END_STATES = {
    pb.PROCESS_STATE_DONE: ProcessState.DONE,
    pb.PROCESS_STATE_FAILED: ProcessState.FAILED,
    pb.PROCESS_STATE_STOPPED: ProcessState.STOPPED,
}


class WorkerRegistryService(pb_grpc.WorkerRegistryServicer):
    def __init__(self, controller: Controller) -> None:
        self._c = controller

    @handle_errors
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.RegisterWorkerResponse:
        v.check_id(request.worker_id, "worker_id")
        if not request.address or len(request.address) > v.MAX_NAME_LENGTH:
            raise InvalidArgument("address must be a host:port the controller can reach")
        if not 1 <= request.capacity <= 10_000:
            raise InvalidArgument(f"capacity must be within 1..10000, got {request.capacity}")
        for pattern in request.scopes:
            v.check_text(pattern, "scope pattern", v.MAX_ID_LENGTH)
        await self._c.register_worker(
            request.worker_id,
            request.address,
            request.capacity,
            tuple(request.scopes) or ("*",),
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
        v.check_id(request.worker_id, "worker_id")
        registered = await self._c.heartbeat(
            request.worker_id, request.incarnation, set(request.running_run_ids)
        )
        return pb.HeartbeatResponse(registered=registered)

    @handle_errors
    async def PushRunEvents(
        self, request_iterator: AsyncIterator[pb.PushRunEventsRequest], context: Context
    ) -> pb.PushRunEventsResponse:
        async for batch in request_iterator:
            self._c.push_events(batch.worker_id, batch.events)
        return pb.PushRunEventsResponse()

    @handle_errors
    async def FinishRun(self, request: pb.FinishRunRequest, context: Context) -> pb.FinishRunResponse:
        v.check_id(request.worker_id, "worker_id")
        v.check_id(request.run_id, "run_id")
        state = _END_STATES.get(request.state)
        if state is None:
            raise InvalidArgument(
                "state must be PROCESS_STATE_DONE, PROCESS_STATE_FAILED or PROCESS_STATE_STOPPED"
            )
        v.check_text(request.error, "error", v.MAX_MESSAGE_LENGTH * 4)
        progress = None
        if request.HasField("progress"):
            v.check_rate(request.progress.rate)
            progress = progress_from_proto(request.progress)
        await self._c.finish_run(
            request.worker_id, request.run_id, state, request.error, progress, request.log_lines
        )
        return pb.FinishRunResponse()
