"""A run's end goes back on the ExecuteProcess stream that started it, and is acknowledged there once
stored; an end the stream does not acknowledge (refused, the stream ended, no answer in time) goes by
FinishRun, as every end does to a controller that does not take ends on its streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import grpc

from shards import ProcessState
from shards._grpc.status import STREAM_OPEN_METADATA
from shards.errors import NotFound
from shards.models import Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_controller.dispatch import Dispatcher
from shards_controller.workers import WorkerEntry
from shards_worker.stream_ends import StreamEnds
from tests.support.cluster import Cluster
from tests.support.waiting import assert_eventually, assert_eventually_async

S = ProcessState
DONE = pb.PROCESS_STATE_DONE


def _end(run_id: str) -> pb.RunEnd:
    return pb.RunEnd(run_id=run_id, state=DONE)


# ---------------------------------------------------------------- unit: the worker's side


def _on_a_stream(scenario: Any) -> None:
    """Run ``scenario(stream, messages)`` on a stream whose controller takes ends."""

    async def main() -> None:
        stream = StreamEnds()
        stream.takes_ends = True
        reading: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        messages = stream.messages(cast(asyncio.Task[None], reading))
        try:
            await scenario(stream, messages)
        finally:
            stream.close()
            reading.set_result(None)

    asyncio.run(main())


def test_an_end_leaves_with_the_next_answer_and_is_done_once_acknowledged_stored() -> None:
    async def scenario(stream: StreamEnds, messages: AsyncIterator[pb.ExecuteProcessResponse]) -> None:
        finishing = asyncio.ensure_future(stream.finish(_end("r1")))
        await asyncio.sleep(0)
        stream.answer(pb.ExecuteProcessResponse(received=3))
        message = await anext(messages)
        # The batch's answer, carrying the end: not an ends-only message.
        assert (message.received, message.ends_only, [e.run_id for e in message.ends]) == (3, False, ["r1"])
        await asyncio.sleep(0.01)
        assert not finishing.done()  # sent is not stored
        stream.acknowledged(pb.ExecuteProcessRequest(stored_ends=["r1"]))
        assert await finishing is True

    _on_a_stream(scenario)


def test_an_end_without_an_answer_to_carry_it_goes_alone_and_a_refused_one_goes_by_finish_run() -> None:
    async def scenario(stream: StreamEnds, messages: AsyncIterator[pb.ExecuteProcessResponse]) -> None:
        finishing = [asyncio.ensure_future(stream.finish(_end(run_id))) for run_id in ("r1", "r2")]
        message = await anext(messages)
        assert message.ends_only and [e.run_id for e in message.ends] == ["r1", "r2"]
        refusal = pb.RunRefusal(
            run_id="r2", code=grpc.StatusCode.UNAVAILABLE.value[0], message="not the leader"
        )
        stream.acknowledged(pb.ExecuteProcessRequest(stored_ends=["r1"], refused_ends=[refusal]))
        assert [await done for done in finishing] == [True, False]

    _on_a_stream(scenario)


def test_the_ends_a_stream_has_not_acknowledged_when_it_ends_go_by_finish_run() -> None:
    async def scenario(stream: StreamEnds, messages: AsyncIterator[pb.ExecuteProcessResponse]) -> None:
        sent = asyncio.ensure_future(stream.finish(_end("sent")))
        assert [e.run_id for e in (await anext(messages)).ends] == ["sent"]
        queued = asyncio.ensure_future(stream.finish(_end("queued")))
        await asyncio.sleep(0)
        stream.close()
        assert (await sent, await queued) == (False, False)
        assert await stream.finish(_end("after")) is False  # a closed stream takes no end

    _on_a_stream(scenario)


def test_an_end_not_acknowledged_in_time_goes_by_finish_run_and_a_late_acknowledgement_is_ignored() -> None:
    # A paused controller keeps its streams open: its successor has the run, and gets the end by FinishRun.
    async def scenario(stream: StreamEnds, messages: AsyncIterator[pb.ExecuteProcessResponse]) -> None:
        finishing = asyncio.ensure_future(stream.finish(_end("r1"), timeout_s=0.05))
        assert [e.run_id for e in (await anext(messages)).ends] == ["r1"]
        assert await finishing is False
        stream.acknowledged(pb.ExecuteProcessRequest(stored_ends=["r1"]))  # too late: nothing to settle
        assert await stream.finish(_end("r2"), timeout_s=0.05) is False

    _on_a_stream(scenario)


def test_a_stream_whose_controller_does_not_take_ends_sends_none() -> None:
    async def main() -> None:
        stream = StreamEnds()
        assert await stream.finish(_end("r1")) is False

    asyncio.run(main())


# ---------------------------------------------------------------- unit: the controller's side


class _Stream:
    """A worker's ExecuteProcess stream: what the dispatcher writes, and the replies it is given."""

    def __init__(self) -> None:
        self.requests: list[pb.ExecuteProcessRequest] = []
        self._replies: asyncio.Queue[pb.ExecuteProcessResponse] = asyncio.Queue()

    async def write(self, request: pb.ExecuteProcessRequest) -> None:
        self.requests.append(request)

    def cancel(self) -> bool:
        return True

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(STREAM_OPEN_METADATA)

    def reply(self, response: pb.ExecuteProcessResponse) -> None:
        self._replies.put_nowait(response)

    async def __aiter__(self) -> AsyncIterator[pb.ExecuteProcessResponse]:
        while True:
            yield await self._replies.get()


class _Stub:
    def __init__(self) -> None:
        self.stream = _Stream()

    def ExecuteProcess(self) -> _Stream:
        return self.stream


def test_the_dispatcher_applies_the_ends_a_worker_sends_back_and_acknowledges_them_in_its_next_request() -> (
    None
):
    applied: list[tuple[str, list[str]]] = []
    outcomes: list[tuple[str, grpc.StatusCode | None]] = []

    async def ends_received(worker_id: str, ends: Sequence[pb.RunEnd]) -> None:
        if any(end.run_id == "unknown" for end in ends):
            raise NotFound("run 'unknown' does not exist")
        applied.append((worker_id, [end.run_id for end in ends]))

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()

        def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
            tasks.add(asyncio.ensure_future(coroutine))

        dispatcher = Dispatcher(
            5.0, lambda run, entry, code, details, received: outcomes.append((run.run_id, code)), spawn
        )
        dispatcher.ends_received = ends_received
        stub = _Stub()
        now = datetime.now(UTC)
        entry = WorkerEntry(
            "w", "127.0.0.1:1", 8, ("*",), now, now, 0.0, cast(grpc.aio.Channel, None), cast(Any, stub)
        )
        stream = stub.stream
        dispatcher.send(Run(run_id="r1", scope_id="s", process_id="p", state=S.RUNNING), entry)
        await assert_eventually_async(lambda: len(stream.requests) == 1, timeout_s=5, interval_s=0.001)
        assert stream.requests[0].takes_ends and [r.run_id for r in stream.requests[0].runs] == ["r1"]
        # The answer to r1's batch carries the end of an earlier run: applied, then acknowledged
        # in a request of its own (no run is ready), which the worker does not answer.
        stream.reply(pb.ExecuteProcessResponse(ends=[_end("r0")]))
        await assert_eventually_async(lambda: len(stream.requests) == 2, timeout_s=5, interval_s=0.001)
        assert list(stream.requests[1].stored_ends) == ["r0"] and not stream.requests[1].runs
        # An end the controller refuses is acknowledged refused, with its status.
        stream.reply(pb.ExecuteProcessResponse(ends_only=True, ends=[_end("unknown")]))
        await assert_eventually_async(lambda: len(stream.requests) == 3, timeout_s=5, interval_s=0.001)
        (refusal,) = stream.requests[2].refused_ends
        assert (refusal.run_id, refusal.code) == ("unknown", grpc.StatusCode.NOT_FOUND.value[0])
        # Neither acknowledgement nor the ends-only message upset the pairing of batches and answers.
        dispatcher.send(Run(run_id="r2", scope_id="s", process_id="p", state=S.RUNNING), entry)
        await assert_eventually_async(lambda: len(stream.requests) == 4, timeout_s=5, interval_s=0.001)
        stream.reply(pb.ExecuteProcessResponse())
        await assert_eventually_async(lambda: len(outcomes) == 2, timeout_s=5, interval_s=0.001)
        dispatcher.close()
        for task in tasks:
            task.cancel()

    asyncio.run(main())
    assert applied == [("w", ["r0"])]
    assert outcomes == [("r1", None), ("r2", None)]


# ---------------------------------------------------------------- integration: a real worker


def _finish_run_calls(cluster: Cluster) -> int:
    assert cluster.controller is not None
    histograms = cluster.controller.rpc_metrics.latency.by_labels
    return sum(h.count for labels, h in histograms.items() if "FinishRun" in labels[-2])


def test_a_real_workers_ends_come_back_on_the_stream_and_by_finish_run_to_a_controller_without_it(
    cluster: Cluster,
) -> None:
    client = cluster.client
    for _ in range(3):
        assert client.wait_run(client.launch_process("ends", "quick").run_id, 30).state is S.DONE
    assert _finish_run_calls(cluster) == 0  # every end came back on the stream
    ends = cluster.workers[0].runner.link.metrics.ends.by_labels
    # Counted once the acknowledgement is back, which may come after the client has seen the end.
    assert_eventually(lambda: ends == {("stream",): 3, ("finish_run",): 0})
    assert cluster.controller is not None
    # A controller that does not take ends on its streams (as before this one) gets them by FinishRun.
    cluster.controller.controller.take_ends_on_streams(None)
    assert client.wait_run(client.launch_process("ends", "quick").run_id, 30).state is S.DONE
    assert_eventually(lambda: _finish_run_calls(cluster) == 1)  # timed once its answer has left
    assert_eventually(lambda: ends == {("stream",): 3, ("finish_run",): 1})


def test_an_answer_read_after_its_runs_end_notes_nothing_of_it(cluster: Cluster) -> None:
    # A quick run's end can leave on the stream before the answer to its batch (which waits up to
    # 10 ms for the run's thread): the answer, read once the run is forgotten, must not note it again.
    client = cluster.client
    run = client.wait_run(client.launch_process("overtake", "quick").run_id, 30)
    assert cluster.controller is not None
    controller = cluster.controller.controller
    entry = controller.pool.get(run.worker_id)
    assert entry is not None

    async def answer_comes_now() -> None:
        controller._runs._executed(run, entry, None, "", 7)

    cluster.run(answer_comes_now())
    active = controller._active
    assert (run.run_id in active.acked_at, run.run_id in active.acked_seq) == (False, False)
