"""The Worker gRPC servicer: called by the controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shards import validation as v
from shards._grpc.status import STREAM_OPEN_METADATA, handle_errors, handle_stream_errors
from shards.convert import info_to_proto
from shards.errors import ShardsError
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker.runner import Runner
from shards_worker.stream_ends import StreamEnds

Context = grpc.aio.ServicerContext[Any, Any]

# How long an ExecuteProcess answer waits for its runs' threads to start (a
# pool with no free thread must not hold the answer up to the controller's deadline).
_START_WAIT_S = 0.01


class WorkerService(pb_grpc.WorkerServicer):
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    @handle_errors
    async def DescribeScope(
        self, request: pb.DescribeScopeRequest, context: Context
    ) -> pb.DescribeScopeResponse:
        v.check_id(request.scope_id, "scope_id")
        infos = await self._runner.describe(request.scope_id)
        return pb.DescribeScopeResponse(processes=[info_to_proto(info) for info in infos])

    @handle_stream_errors
    async def ExecuteProcess(
        self, requests: AsyncIterator[pb.ExecuteProcessRequest], context: Context
    ) -> AsyncIterator[pb.ExecuteProcessResponse]:
        # First, before any run is read: a controller that never gets this knows
        # that none of what it wrote on the stream reached this worker's code.
        await context.send_initial_metadata((STREAM_OPEN_METADATA,))
        stream = StreamEnds()
        reading = asyncio.ensure_future(self._read(requests, stream))
        try:
            async for message in stream.messages(reading):
                yield message
            await reading  # what ended the reading (a malformed batch) ends the stream
        finally:
            reading.cancel()
            stream.close()

    async def _read(self, requests: AsyncIterator[pb.ExecuteProcessRequest], stream: StreamEnds) -> None:
        async for request in requests:
            stream.takes_ends = request.takes_ends  # every request says it
            acknowledges = bool(request.stored_ends or request.refused_ends)
            if acknowledges:
                stream.acknowledged(request)
            if request.runs or not acknowledges:
                stream.answer(await self._execute(request, stream))

    async def _execute(
        self, request: pb.ExecuteProcessRequest, stream: StreamEnds
    ) -> pb.ExecuteProcessResponse:
        v.check_range(len(request.runs), "the number of runs", 1, v.MAX_RUNS_PER_BATCH)
        for run in request.runs:
            v.check_id(run.run_id, "run_id")
            v.check_id(run.scope_id, "scope_id")
            v.check_id(run.process_id, "process_id")
            v.check_optional_id(run.parent_run_id, "parent_run_id")
        # Each run starts or is refused on its own: one unknown process does
        # not hold back the others of the batch.
        refused = []
        starting = []
        for run in request.runs:
            try:
                started = await self._runner.execute(run, stream)
            except ShardsError as error:
                refused.append(
                    pb.RunRefusal(run_id=run.run_id, code=error.code.value[0], message=error.message)
                )
            else:
                if started is not None:
                    starting.append(started)
        if starting:
            # The answer waits (briefly) for the runs' threads to pick them up:
            # the loop stands aside meanwhile, so the code gets the GIL now
            # rather than after the answer has been sent.
            await asyncio.wait(starting, timeout=_START_WAIT_S)
        return pb.ExecuteProcessResponse(refused=refused, received=self._runner.received)

    @handle_errors
    async def StopRun(self, request: pb.StopRunRequest, context: Context) -> pb.StopRunResponse:
        v.check_id(request.run_id, "run_id")
        grace = None
        if request.HasField("stop_grace"):
            grace = request.stop_grace.ToTimedelta().total_seconds()
            v.check_seconds(grace, "stop_grace")
        return pb.StopRunResponse(was_running=self._runner.stop(request.run_id, grace))
