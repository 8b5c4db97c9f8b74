"""Launches over one long-lived LaunchProcesses stream per controller channel.

A message on an open stream reaches the controller in about a third of the
time of a new unary call, for half the CPU on both sides (``python -m
bench.floor``), and a launch is the call that users make most and wait on.

Each launch gets an id; the controller answers it with that id when it is
done. Launches made while a message is being written leave together in the
next one, and the controller answers together those done together: under
load, one message carries many launches each way.

An answer that is a failure, the stream's end and a launch's timeout are all
raised as the ``grpc.aio.AioRpcError`` a LaunchProcess call would have raised,
so that ``ControllerChannel.call`` retries and follows the leader exactly as
for any call (launches carry idempotency keys: a retry runs once).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import grpc

from shards import validation as v
from shards._grpc.status import rpc_error, status_code
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from shards.processmanager.v1.processmanager_pb2_grpc import ProcessControllerAsyncStub as Stub
else:
    Stub = pb_grpc.ProcessControllerStub


class LaunchStream:
    """Launches multiplexed over one LaunchProcesses stream; ``broken`` once it has ended."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call: Any = Stub(channel).LaunchProcesses()  # type: ignore[call-arg]  # we write()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[pb.TaggedLaunchResult]] = {}
        self._outbox: list[pb.TaggedLaunch] = []
        self._writer: asyncio.Task[None] | None = None
        self._reader = asyncio.ensure_future(self._read())
        self.broken: grpc.aio.AioRpcError | None = None

    async def launch(self, request: pb.LaunchProcessRequest, timeout_s: float) -> pb.LaunchProcessResponse:
        if self.broken is not None:
            raise self.broken
        request_id = next(self._ids)
        answer: asyncio.Future[pb.TaggedLaunchResult] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        self._outbox.append(pb.TaggedLaunch(request_id=request_id, launch=request))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write())
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for, which can swallow a cancel on 3.11
                reply = await answer
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self._waiting.pop(request_id, None)
        if reply.HasField("failed"):
            failed = reply.failed
            raise rpc_error(status_code(failed.code), failed.message, failed.leader)
        return reply.launched

    async def close(self) -> None:
        self._end(rpc_error(grpc.StatusCode.CANCELLED, "the client was closed"))
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()

    async def _write(self) -> None:
        try:
            while self._outbox and self.broken is None:
                launches = self._outbox[: v.MAX_RUNS_PER_BATCH]
                del self._outbox[: len(launches)]
                await self._call.write(pb.LaunchProcessesRequest(launches=launches))
        except grpc.aio.AioRpcError as error:
            self._end(error)
        except Exception as error:  # the call is over (grpc raises its own usage errors then)
            self._end(rpc_error(grpc.StatusCode.UNAVAILABLE, f"the launch stream ended: {error}"))
        finally:
            self._writer = None

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                for result in reply.results:
                    waiting = self._waiting.get(result.request_id)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(result)
        except grpc.aio.AioRpcError as error:
            self._end(error)
        except asyncio.CancelledError:
            self._end(rpc_error(grpc.StatusCode.CANCELLED, "the launch stream was closed"))
            raise
        else:
            self._end(rpc_error(grpc.StatusCode.UNAVAILABLE, "the controller ended the launch stream"))

    def _end(self, error: grpc.aio.AioRpcError) -> None:
        """Fail every launch waiting for an answer; the next launch opens a new stream."""
        if error.code() is grpc.StatusCode.INTERNAL:
            # A write on a connection that has died fails with "Internal error
            # from Core" (the server answers its own errors launch by launch):
            # the controller is unreachable, which callers retry elsewhere.
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"the launch stream broke: {error.details()}")
        if self.broken is None:
            self.broken = error
            self._call.cancel()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(error)
        self._outbox.clear()
