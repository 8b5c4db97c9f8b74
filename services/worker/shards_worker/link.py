"""The worker's side of WorkerRegistry (and the launches its processes make)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc

from shards._grpc.channel import ControllerChannel
from shards.convert import info_to_proto
from shards.models import ProcessInfo
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class ControllerLink:
    """Calls from a worker to the leading controller, retried across a take-over."""

    def __init__(self, addresses: Sequence[str] | str) -> None:
        self.channel = ControllerChannel(addresses, retry_deadline_s=30.0)

    def _registry(self, channel: grpc.aio.Channel) -> pb_grpc.WorkerRegistryAsyncStub:
        return pb_grpc.WorkerRegistryStub(channel)

    async def register(self, request: pb.RegisterWorkerRequest) -> pb.RegisterWorkerResponse:
        return await self.channel.call(lambda ch: self._registry(ch).RegisterWorker(request, timeout=5))

    async def heartbeat(self, request: pb.HeartbeatRequest) -> bool:
        reply = await self.channel.call(
            lambda ch: self._registry(ch).Heartbeat(request, timeout=5), deadline_s=1.0
        )
        return reply.registered

    async def finish_run(self, request: pb.FinishRunRequest) -> None:
        """Report the end of a run until the controller takes it (it is idempotent there)."""
        backoff = 0.1
        while True:
            try:
                await self.channel.call(lambda ch: self._registry(ch).FinishRun(request, timeout=5))
                return
            except grpc.aio.AioRpcError as error:
                if error.code() in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    log.warning("controller refused the end of run %s: %s", request.run_id, error.details())
                    return
                log.info(
                    "reporting the end of run %s failed (%s); retrying", request.run_id, error.code().name
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def push_events(self, batches: AsyncIterator[pb.PushRunEventsRequest]) -> None:
        """One client stream of progress batches (ends when ``batches`` ends or the stream breaks)."""
        await self._registry(self.channel.channel()).PushRunEvents(batches)

    async def launch_child(
        self,
        scope_id: str,
        process_id: str,
        parent_run_id: str,
        idempotency_key: str,
        definition: ProcessInfo | None,
        preferred_worker_id: str,
    ) -> str:
        request = pb.LaunchProcessRequest(
            scope_id=scope_id,
            process_id=process_id,
            parent_run_id=parent_run_id,
            idempotency_key=idempotency_key,
            definition=info_to_proto(definition) if definition is not None else None,
            preferred_worker_id=preferred_worker_id,
        )
        reply = await self.channel.call(
            lambda ch: pb_grpc.ProcessControllerStub(ch).LaunchProcess(request, timeout=10)
        )
        return reply.run_id

    async def wait_run(self, run_id: str) -> pb.Run:
        """The run once it has ended (waits as long as it takes, across take-overs)."""
        request = pb.GetRunRequest(run_id=run_id, wait_until_ended=True)
        while True:
            try:
                reply = await self.channel.call(lambda ch: pb_grpc.ProcessControllerStub(ch).GetRun(request))
                return reply.run
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.channel.close()
