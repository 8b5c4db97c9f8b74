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
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards.states import ProcessState
from tests.support.apps import gate
from tests.support.cluster import Cluster

C = grpc.StatusCode


class _FakeCall:
    """A LaunchProcesses call: answers every ``batch`` launches in one message, in reverse order.

    Or fails every write with ``write_error``.
    """

    def __init__(self, write_error: grpc.aio.AioRpcError | None = None, batch: int = 2) -> None:
        self.write_error = write_error
        self.batch = batch
        self.written: list[pb.LaunchProcessesRequest] = []
        self._unanswered: list[pb.TaggedLaunch] = []
        self._ready: asyncio.Queue[pb.LaunchProcessesResponse | None] = asyncio.Queue()

    async def write(self, message: pb.LaunchProcessesRequest) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written.append(message)
        self._unanswered.extend(message.launches)
        while len(self._unanswered) >= self.batch:
            group, self._unanswered = self._unanswered[: self.batch], self._unanswered[self.batch :]
            self._ready.put_nowait(pb.LaunchProcessesResponse(results=[_result(t) for t in reversed(group)]))

    def cancel(self) -> bool:
        self._ready.put_nowait(None)
        return True

    async def __aiter__(self) -> AsyncIterator[pb.LaunchProcessesResponse]:
        while (reply := await self._ready.get()) is not None:
            yield reply


def _result(tagged: pb.TaggedLaunch) -> pb.TaggedLaunchResult:
    result = pb.TaggedLaunchResult(request_id=tagged.request_id)
    if tagged.launch.process_id == "refused":
        result.failed.CopyFrom(pb.LaunchFailure(code=C.FAILED_PRECONDITION.value[0], message="active"))
    else:
        result.launched.run_id = f"run-of-{tagged.launch.process_id}"
    return result


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


def test_launches_made_together_leave_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        call = _FakeCall(batch=10)
        stream = _stream(call, monkeypatch)
        launched = await asyncio.gather(*(stream.launch(_launch(f"p{n}"), 5) for n in range(10)))
        assert [reply.run_id for reply in launched] == [f"run-of-p{n}" for n in range(10)]
        assert [len(message.launches) for message in call.written] == [10]
        assert len({tagged.request_id for tagged in call.written[0].launches}) == 10
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


def test_a_message_of_launches_is_answered_launch_by_launch(cluster: Cluster) -> None:
    # Two launches of one process in one message: one of them finds the
    # other's run active and is refused; the message's other launch goes on.
    tagged = [
        pb.TaggedLaunch(request_id=10, launch=pb.LaunchProcessRequest(scope_id="multi", process_id="gated")),
        pb.TaggedLaunch(request_id=11, launch=pb.LaunchProcessRequest(scope_id="multi", process_id="quick")),
        pb.TaggedLaunch(request_id=12, launch=pb.LaunchProcessRequest(scope_id="multi", process_id="gated")),
    ]
    with grpc.insecure_channel(cluster.address) as channel:
        replies = list(
            pb_grpc.ProcessControllerStub(channel).LaunchProcesses(
                iter([pb.LaunchProcessesRequest(launches=tagged)]), timeout=10
            )
        )
    results = {result.request_id: result for reply in replies for result in reply.results}
    assert sorted(results) == [10, 11, 12]  # each answered once
    assert results[11].launched.process.process_id == "quick" and results[11].launched.run_id
    gated = [results[10], results[12]]
    launched = [result for result in gated if result.HasField("launched")]
    refused = [result for result in gated if result.HasField("failed")]
    assert len(launched) == 1 and launched[0].launched.process.process_id == "gated"
    assert len(refused) == 1 and refused[0].failed.code == C.FAILED_PRECONDITION.value[0]
    assert "already" in refused[0].failed.message
    gate("multi").set()
    assert cluster.client.wait_run(launched[0].launched.run_id).state is ProcessState.DONE
