"""Runs go to workers, and their ends come back, in batches: taken or refused whole, each run on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest

from shards import ProcessState
from shards._grpc.status import STREAM_OPEN_METADATA, rpc_error
from shards.models import Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.dispatch import Dispatcher
from shards_controller.workers import WorkerEntry
from tests.support.apps import gate
from tests.support.cluster import Cluster
from tests.support.waiting import assert_eventually, assert_eventually_async

S = ProcessState
C = grpc.StatusCode


# ---------------------------------------------------------------- unit: the dispatcher


class _FakeStream:
    """A worker's ExecuteProcess stream: records each batch written, answers them in order.

    ``writes`` gates each write (a slow transport), ``answers`` gates the answers.
    """

    def __init__(self, refuse: dict[str, pb.RunRefusal], opens: bool) -> None:
        self.opens = opens  # the worker has the stream (its initial metadata comes at once)
        self.batches: list[list[str]] = []
        self.refuse = refuse
        self.writes = asyncio.Event()
        self.writes.set()
        self.answers = asyncio.Event()
        self.broken: grpc.aio.AioRpcError | None = None
        self._written: asyncio.Queue[pb.ExecuteProcessRequest] = asyncio.Queue()
        self._failed = asyncio.Event()
        self.cancelled = False

    async def write(self, request: pb.ExecuteProcessRequest) -> None:
        if self.broken is not None:
            raise self.broken
        self.batches.append([run.run_id for run in request.runs])
        self._written.put_nowait(request)
        await self.writes.wait()

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    async def initial_metadata(self) -> grpc.aio.Metadata:
        if self.opens:
            return grpc.aio.Metadata(STREAM_OPEN_METADATA)
        await self._failed.wait()  # a call that never connected has none, once it failed
        return grpc.aio.Metadata()

    def break_with(self, code: grpc.StatusCode, details: str = "connection reset") -> None:
        self.broken = rpc_error(code, details)
        self._failed.set()
        self._written.put_nowait(pb.ExecuteProcessRequest())  # wakes the reader

    async def __aiter__(self) -> AsyncIterator[pb.ExecuteProcessResponse]:
        while True:
            request = await self._written.get()
            if self.broken is not None:
                raise self.broken
            await self.answers.wait()
            yield pb.ExecuteProcessResponse(
                refused=[self.refuse[run.run_id] for run in request.runs if run.run_id in self.refuse]
            )


class _FakeWorkerStub:
    def __init__(self, refuse: dict[str, pb.RunRefusal] | None = None, opens: bool = True) -> None:
        self.refuse = refuse or {}
        self.opens = opens
        self.streams: list[_FakeStream] = []

    def ExecuteProcess(self) -> _FakeStream:
        self.streams.append(_FakeStream(self.refuse, self.opens))
        return self.streams[-1]

    @property
    def stream(self) -> _FakeStream:
        return self.streams[-1]


def _entry(stub: _FakeWorkerStub) -> WorkerEntry:
    now = datetime.now(UTC)
    channel = cast(grpc.aio.Channel, None)
    return WorkerEntry("w", "127.0.0.1:1", 8, ("*",), now, now, 0.0, channel, cast(Any, stub))


def _run(run_id: str) -> Run:
    return Run(run_id=run_id, scope_id="s", process_id="p", state=S.RUNNING)


Outcomes = list[tuple[str, grpc.StatusCode | None]]


def _dispatching(stub: _FakeWorkerStub, scenario: Any, timeout_s: float = 5.0) -> Outcomes:
    """Run ``scenario(dispatcher, entry, outcomes)``; the outcomes once every run has one."""
    outcomes: Outcomes = []
    tasks: set[asyncio.Task[None]] = set()

    async def main() -> None:
        def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
            tasks.add(asyncio.ensure_future(coroutine))

        dispatcher = Dispatcher(
            timeout_s, lambda run, entry, code, details, received: outcomes.append((run.run_id, code)), spawn
        )
        await scenario(dispatcher, _entry(stub), outcomes)
        dispatcher.close()

    asyncio.run(main())
    return outcomes


async def _until(condition: Any) -> None:
    await assert_eventually_async(condition, timeout_s=5, interval_s=0.001)


def test_a_lone_run_leaves_at_once_and_the_runs_ready_during_a_write_leave_together_next() -> None:
    stub = _FakeWorkerStub()

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry, outcomes: Outcomes) -> None:
        dispatcher.send(_run("r1"), entry)
        stream = stub.stream
        stream.writes.clear()  # the transport is slow: r1's write is under way
        await _until(lambda: stream.batches == [["r1"]])
        for run_id in ("r2", "r3", "r4"):
            dispatcher.send(_run(run_id), entry)
        stream.writes.set()
        stream.answers.set()
        await _until(lambda: len(outcomes) == 4)

    outcomes = _dispatching(stub, scenario)
    assert len(stub.streams) == 1  # one stream for all of them
    assert stub.stream.batches == [["r1"], ["r2", "r3", "r4"]]
    assert outcomes == [(run_id, None) for run_id in ("r1", "r2", "r3", "r4")]


def test_a_run_the_worker_refuses_is_reported_alone_and_the_others_of_its_batch_started() -> None:
    refusal = pb.RunRefusal(run_id="r2", code=C.NOT_FOUND.value[0], message="no process 'p'")
    stub = _FakeWorkerStub(refuse={"r2": refusal})

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry, outcomes: Outcomes) -> None:
        for run_id in ("r1", "r2", "r3"):
            dispatcher.send(_run(run_id), entry)
        stub.stream.answers.set()
        await _until(lambda: len(outcomes) == 3)

    outcomes = _dispatching(stub, scenario)
    assert outcomes == [("r1", None), ("r2", C.NOT_FOUND), ("r3", None)]


def test_when_the_stream_breaks_a_batch_sent_may_have_started_and_one_never_sent_did_not() -> None:
    stub = _FakeWorkerStub()

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry, outcomes: Outcomes) -> None:
        dispatcher.send(_run("sent"), entry)
        stream = stub.stream
        stream.writes.clear()
        await _until(lambda: stream.batches == [["sent"]])
        dispatcher.send(_run("queued"), entry)
        stream.break_with(C.UNAVAILABLE)
        stream.writes.set()
        await _until(lambda: len(outcomes) == 2)
        assert stream.cancelled
        # The next run opens a new stream.
        dispatcher.send(_run("later"), entry)
        stub.stream.answers.set()
        await _until(lambda: len(outcomes) == 3)

    outcomes = _dispatching(stub, scenario)
    # UNKNOWN: the controller takes "sent" for lost; UNAVAILABLE: "queued" goes to another worker.
    assert sorted(outcomes, key=str) == sorted(
        [("sent", C.UNKNOWN), ("queued", C.UNAVAILABLE), ("later", None)], key=str
    )
    assert len(stub.streams) == 2


CONNECT_FAILED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused"
)


@pytest.mark.parametrize("opened", [False, True])
def test_a_batch_written_on_a_stream_that_never_connected_did_not_start(opened: bool) -> None:
    stub = _FakeWorkerStub(opens=opened)
    seen: list[WorkerEntry] = []

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry, outcomes: Outcomes) -> None:
        seen.append(entry)
        dispatcher.send(_run("written"), entry)
        stream = stub.stream
        stream.writes.clear()
        await _until(lambda: stream.batches == [["written"]])
        dispatcher.send(_run("queued"), entry)
        stream.break_with(C.UNAVAILABLE, CONNECT_FAILED)
        stream.writes.set()
        await _until(lambda: len(outcomes) == 2)

    outcomes = sorted(_dispatching(stub, scenario), key=str)
    if opened:
        # The worker had the stream (its metadata came): "written" may have started.
        assert outcomes == [("queued", C.UNAVAILABLE), ("written", C.UNKNOWN)]
        assert not seen[0].unreachable
    else:
        # No metadata and no subchannel to go out on: nothing reached the worker.
        assert outcomes == [("queued", C.UNAVAILABLE), ("written", C.UNAVAILABLE)]
        assert seen[0].unreachable


def test_a_batch_the_worker_does_not_answer_in_time_is_reported_and_its_stream_closed() -> None:
    stub = _FakeWorkerStub()

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry, outcomes: Outcomes) -> None:
        dispatcher.send(_run("r1"), entry)
        await _until(lambda: len(outcomes) == 1)  # answers never come
        assert stub.stream.cancelled

    outcomes = _dispatching(stub, scenario, timeout_s=0.05)
    assert outcomes == [("r1", C.DEADLINE_EXCEEDED)]


# ---------------------------------------------------------------- integration: FinishRun batches


def _finish(cluster: Cluster, ends: list[pb.RunEnd]) -> grpc.StatusCode:
    with grpc.insecure_channel(cluster.address) as channel:
        request = pb.FinishRunRequest(worker_id=cluster.workers[0].worker_id, ends=ends)
        try:
            pb_grpc.WorkerRegistryStub(channel).FinishRun(request, timeout=5)
        except grpc.RpcError as error:
            return cast(grpc.Call, error).code()
    return C.OK


def test_a_batch_of_run_ends_is_refused_whole_or_taken_whole(cluster: Cluster) -> None:
    client = cluster.client
    runs = {scope: client.launch_process(scope, "gated") for scope in ("one", "two")}
    assert_eventually(lambda: {client.get_process(scope, "gated").state for scope in runs} == {S.RUNNING})
    done_one = pb.RunEnd(run_id=runs["one"].run_id, state=pb.PROCESS_STATE_DONE)
    done_two = pb.RunEnd(run_id=runs["two"].run_id, state=pb.PROCESS_STATE_DONE)
    before = {scope: client.get_process(scope, "gated") for scope in runs}

    # One bad end refuses the batch: nothing of it is applied.
    assert _finish(cluster, [done_one, pb.RunEnd(run_id=runs["two"].run_id, state=cast(Any, 77))]) is (
        C.INVALID_ARGUMENT
    )
    assert _finish(cluster, [done_one, pb.RunEnd(run_id="no-such-run", state=pb.PROCESS_STATE_DONE)]) is (
        C.NOT_FOUND
    )
    assert _finish(cluster, []) is C.INVALID_ARGUMENT
    assert {scope: client.get_process(scope, "gated") for scope in runs} == before

    # A good batch ends every run of it; the worker's own later report is taken as a retry.
    assert _finish(cluster, [done_one, done_two]) is C.OK
    assert {client.get_run(run.run_id).state for run in runs.values()} == {S.DONE}
    for scope in runs:
        gate(scope).set()
    assert_eventually(lambda: cluster.workers[0].runner.running_ids() == [])
    assert {client.get_process(scope, "gated").run_id for scope in runs} == {r.run_id for r in runs.values()}


def test_many_runs_ready_at_once_all_start_and_end(tmp_path: Any) -> None:
    """Runs queued before any worker exists go out together once one registers."""
    from tests.support.cluster import embedded_uri

    count = 12
    queued = Cluster(embedded_uri(tmp_path))
    try:
        queued.start_controller()
        client = queued.client
        queued.define_then_leave(*(f"batch-{n}" for n in range(count)))
        runs = [client.launch_process(f"batch-{n}", "quick") for n in range(count)]
        assert {client.get_process(f"batch-{n}", "quick").state for n in range(count)} == {S.SCHEDULED}
        queued.start_worker(capacity=count)
        assert {client.wait_run(run.run_id, 10).state for run in runs} == {S.DONE}
    finally:
        queued.close()


def test_a_freed_slots_next_run_starts_in_the_same_write_as_the_end_that_freed_it(tmp_path: Any) -> None:
    """The slot is free once the end is staged: the next run's start does not wait one more write."""
    from shards_controller.store import WriteBatch
    from tests.support.cluster import embedded_uri

    cluster = Cluster(embedded_uri(tmp_path))
    try:
        server = cluster.start_controller()
        store = server.store
        writes: list[dict[str, S]] = []
        write = store.write

        async def recorded(batch: WriteBatch, term: int) -> None:
            writes.append({run.run_id: run.state for run in batch.runs})
            await write(batch, term)

        store.write = recorded  # type: ignore[method-assign]  # a spy: the real store still writes
        cluster.start_worker(capacity=1)
        client = cluster.client
        first = client.launch_process("slot-a", "gated")  # holds the only slot until its gate opens
        second = client.launch_process("slot-b", "quick")
        assert client.get_process("slot-b", "quick").state is S.SCHEDULED  # waits for the slot
        gate("slot-a").set()
        assert client.wait_run(first.run_id, 10).state is S.DONE
        assert client.wait_run(second.run_id, 10).state is S.DONE
        ended = next(n for n, runs in enumerate(writes) if runs.get(first.run_id) is S.DONE)
        assert writes[ended].get(second.run_id) is S.RUNNING, writes
    finally:
        cluster.close()
