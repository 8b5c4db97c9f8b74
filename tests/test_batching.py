"""Runs go to workers, and their ends come back, in batches: taken or refused whole, each run on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, cast

import grpc

from shards import ProcessState
from shards.models import Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.dispatch import Dispatcher
from shards_controller.workers import WorkerEntry
from tests.support.apps import gate
from tests.support.cluster import Cluster
from tests.support.waiting import assert_eventually

S = ProcessState
C = grpc.StatusCode


# ---------------------------------------------------------------- unit: the dispatcher


class _GatedWorkerStub:
    """A worker's ExecuteProcess that records each call and answers when ``gate`` opens."""

    def __init__(self, refuse: dict[str, pb.RunRefusal] | None = None) -> None:
        self.gate = asyncio.Event()
        self.calls: list[list[str]] = []
        self.refuse = refuse or {}

    async def ExecuteProcess(
        self, request: pb.ExecuteProcessRequest, **options: Any
    ) -> pb.ExecuteProcessResponse:
        self.calls.append([run.run_id for run in request.runs])
        await self.gate.wait()
        return pb.ExecuteProcessResponse(
            refused=[self.refuse[run.run_id] for run in request.runs if run.run_id in self.refuse]
        )


def _entry(stub: _GatedWorkerStub) -> WorkerEntry:
    now = datetime.now(UTC)
    channel = cast(grpc.aio.Channel, None)
    return WorkerEntry("w", "127.0.0.1:1", 8, ("*",), now, now, 0.0, channel, cast(Any, stub))


def _run(run_id: str) -> Run:
    return Run(run_id=run_id, scope_id="s", process_id="p", state=S.RUNNING)


def _dispatching(stub: _GatedWorkerStub, scenario: Any) -> list[tuple[str, grpc.StatusCode | None, str]]:
    outcomes: list[tuple[str, grpc.StatusCode | None, str]] = []
    tasks: set[asyncio.Task[None]] = set()

    async def main() -> None:
        def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
            tasks.add(asyncio.ensure_future(coroutine))

        dispatcher = Dispatcher(
            5.0, lambda run, entry, code, details: outcomes.append((run.run_id, code, details)), spawn
        )
        await scenario(dispatcher, _entry(stub))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(main())
    return outcomes


def test_a_lone_run_leaves_at_once_and_the_runs_ready_meanwhile_leave_together_next() -> None:
    stub = _GatedWorkerStub()

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry) -> None:
        dispatcher.send(_run("r1"), entry)
        await asyncio.sleep(0)  # the first call is out, waiting for the worker
        for run_id in ("r2", "r3", "r4"):
            dispatcher.send(_run(run_id), entry)
        assert stub.calls == [["r1"]]
        stub.gate.set()

    outcomes = _dispatching(stub, scenario)
    assert stub.calls == [["r1"], ["r2", "r3", "r4"]]
    assert outcomes == [(run_id, None, "") for run_id in ("r1", "r2", "r3", "r4")]


def test_a_run_the_worker_refuses_is_reported_alone_and_the_others_of_its_call_started() -> None:
    refusal = pb.RunRefusal(run_id="r2", code=C.NOT_FOUND.value[0], message="no process 'p'")
    stub = _GatedWorkerStub(refuse={"r2": refusal})
    stub.gate.set()

    async def scenario(dispatcher: Dispatcher, entry: WorkerEntry) -> None:
        for run_id in ("r1", "r2", "r3"):
            dispatcher.send(_run(run_id), entry)

    outcomes = _dispatching(stub, scenario)
    assert outcomes == [("r1", None, ""), ("r2", C.NOT_FOUND, "no process 'p'"), ("r3", None, "")]


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
        runs = [client.launch_process(f"batch-{n}", "quick") for n in range(count)]
        assert {client.get_process(f"batch-{n}", "quick").state for n in range(count)} == {S.SCHEDULED}
        queued.start_worker(capacity=count)
        assert {client.wait_run(run.run_id, 10).state for run in runs} == {S.DONE}
    finally:
        queued.close()
