"""The client's launch stream: answers matched by id, and a broken stream raised as a retryable error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from shards._grpc import launch_stream
from shards._grpc.launch_stream import LaunchStream
from shards._grpc.status import rpc_error
from shards.processmanager.v1 import processmanager_pb2 as pb

C = grpc.StatusCode


class _FakeCall:
    """A LaunchProcesses call: answers each launch in reverse order of arrival, or fails writes."""

    def __init__(self, write_error: grpc.aio.AioRpcError | None = None, batch: int = 2) -> None:
        self.write_error = write_error
        self.batch = batch
        self.written: list[pb.LaunchProcessesRequest] = []
        self._ready: asyncio.Queue[pb.LaunchProcessesRequest | None] = asyncio.Queue()

    async def write(self, message: pb.LaunchProcessesRequest) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written.append(message)
        if len(self.written) % self.batch == 0:
            for answered in reversed(self.written[-self.batch :]):
                self._ready.put_nowait(answered)

    def cancel(self) -> bool:
        self._ready.put_nowait(None)
        return True

    async def __aiter__(self) -> AsyncIterator[pb.LaunchProcessesResponse]:
        while (message := await self._ready.get()) is not None:
            reply = pb.LaunchProcessesResponse(request_id=message.request_id)
            if message.launch.process_id == "refused":
                reply.failed.CopyFrom(pb.LaunchFailure(code=C.FAILED_PRECONDITION.value[0], message="active"))
            else:
                reply.launched.run_id = f"run-of-{message.launch.process_id}"
            yield reply


def _stream(call: _FakeCall, monkeypatch: pytest.MonkeyPatch) -> LaunchStream:
    class Stub:
        def __init__(self, channel: Any) -> None:
            pass

        def LaunchProcesses(self) -> _FakeCall:
            return call

    monkeypatch.setattr(launch_stream, "Stub", Stub)
    return LaunchStream(cast(grpc.aio.Channel, None))


def _launch(process_id: str) -> pb.LaunchProcessRequest:
    return pb.LaunchProcessRequest(scope_id="s", process_id=process_id)


def test_answers_that_come_out_of_order_reach_their_own_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        stream = _stream(_FakeCall(batch=2), monkeypatch)
        first, second = await asyncio.gather(
            stream.launch(_launch("p1"), 5), stream.launch(_launch("p2"), 5), return_exceptions=True
        )
        assert cast(pb.LaunchProcessResponse, first).run_id == "run-of-p1"
        assert cast(pb.LaunchProcessResponse, second).run_id == "run-of-p2"
        refused, third = await asyncio.gather(
            stream.launch(_launch("refused"), 5), stream.launch(_launch("p3"), 5), return_exceptions=True
        )
        assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() is C.FAILED_PRECONDITION
        assert cast(pb.LaunchProcessResponse, third).run_id == "run-of-p3"
        assert stream.broken is None
        await stream.close()

    asyncio.run(scenario())


def test_a_write_on_a_dead_connection_is_unavailable_so_the_launch_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What grpc raises when the controller died while the stream was idle.
    core = rpc_error(C.INTERNAL, "Internal error from Core")

    async def scenario() -> None:
        stream = _stream(_FakeCall(write_error=core), monkeypatch)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.launch(_launch("p1"), 5)
        assert failed.value.code() is C.UNAVAILABLE  # ControllerChannel.call retries this one
        assert "Internal error from Core" in (failed.value.details() or "")
        assert stream.broken is not None  # the client opens a new stream for the next launch
        await stream.close()

    asyncio.run(scenario())


def test_a_launch_with_no_answer_in_time_is_deadline_exceeded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        stream = _stream(_FakeCall(batch=1000), monkeypatch)  # never answers
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.launch(_launch("p1"), 0.05)
        assert failed.value.code() is C.DEADLINE_EXCEEDED
        assert stream.broken is None  # one slow launch does not end the stream for the others
        await stream.close()

    asyncio.run(scenario())
