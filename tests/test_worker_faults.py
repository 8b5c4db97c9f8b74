"""Integration: a worker tells the truth under ordinary faults (issue 10, items 5, 6, 8, 11)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shards import ProcessState
from shards._grpc.credentials import make_channel
from shards.errors import Unavailable
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker.server import WorkerSecurity
from tests.support.apps import FAULT_APP, GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually

S = ProcessState


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Cluster]:
    """A controller on the embedded store and no worker yet (tests start theirs on FAULT_APP)."""
    running = Cluster(embedded_uri(tmp_path))
    try:
        running.start_controller()
        yield running
    finally:
        for event in GATES.values():
            event.set()  # let stubborn threads end
        running.close()
        GATES.clear()


def test_a_run_that_ignores_a_worker_shutdown_ends_failed_at_once_saying_why(faults: Cluster) -> None:
    worker = faults.start_worker(FAULT_APP)
    client = faults.client
    run_id = client.launch_process("farm", "stubborn").run_id
    # The worker has it (``running`` is stored when the run is handed out, before the worker
    # has it: a worker stopped in between never had it, and the run goes back to the queue).
    assert_eventually(lambda: run_id in worker.runner.running_ids())
    assert client.get_run(run_id).state is S.RUNNING
    faults.stop_worker(worker, grace_s=0.5)
    # At once: no waiting for the controller to notice the silence (lost, 1 s later here).
    run = client.get_run(run_id)
    assert run.state is S.FAILED, run
    assert run.error == "worker shut down after 0.5 s grace (the run did not stop when asked)"
    assert client.get_process("farm", "stubborn").state is S.FAILED
    gate("stubborn:farm").set()


def test_a_stop_the_worker_did_not_take_is_asked_again_until_it_is(faults: Cluster) -> None:
    """A StopRun that failed (the worker busy or unreachable for a moment) is not dropped: the run
    would stay stop_requested while its code went on (it did, before the eleventh session)."""
    worker = faults.start_worker(FAULT_APP)
    client = faults.client
    run_id = client.launch_process("farm", "until-stopped").run_id
    assert_eventually(lambda: run_id in worker.runner.running_ids())
    taken = worker.runner.stop
    refused: list[str] = []

    def refuse_twice(asked: str, grace_s: float | None = None) -> bool:
        if len(refused) < 2:  # the worker answers UNAVAILABLE, as one going through a bad moment
            refused.append(asked)
            raise Unavailable("the worker is busy")
        return taken(asked, grace_s)

    worker.runner.stop = refuse_twice  # type: ignore[method-assign, assignment]
    client.stop_process("farm", "until-stopped")
    assert_eventually(lambda: client.get_run(run_id).state.is_end)
    run = client.get_run(run_id)
    assert run.state is S.STOPPED, run
    assert refused == [run_id, run_id]  # refused twice, then taken on the third asking


def test_an_overdue_stop_whose_report_was_lost_is_reported_again(faults: Cluster) -> None:
    """The worker says once that a stop is overdue; a progress stream that broke with it on board
    (a take-over, a restart) lost it, and no record said so (before the eleventh session)."""
    worker = faults.start_worker(FAULT_APP)
    client = faults.client
    run_id = client.launch_process("farm", "stubborn").run_id
    assert_eventually(lambda: run_id in worker.runner.running_ids())
    assert faults.controller is not None
    controller = faults.controller.controller
    taken = controller.push_events
    broken: list[str] = []

    def break_the_first_report(worker_id: str, events: Any) -> int:
        events = list(events)
        if not broken and any(event.stop_overdue for event, _ in events):
            broken.append(worker_id)  # the stream ends with the report, as a take-over ends it
            raise Unavailable("the controller went away")
        return taken(worker_id, events)

    controller.push_events = break_the_first_report  # type: ignore[method-assign]
    client.stop_process("farm", "stubborn", stop_grace_s=0.1)
    assert_eventually(lambda: client.get_process("farm", "stubborn").stop_overdue_since)
    assert broken == [worker.worker_id]  # the first report was lost: this one came again
    gate("stubborn:farm").set()
    assert client.wait_run(run_id, 10).state is S.STOPPED


TOKEN, WORKER_TOKEN = "faults-admin-token", "faults-worker-token"
POLICY = f"""
[clients.admin]
token = "{TOKEN}"
grants = [{{ scopes = ["*"], actions = ["*"] }}]
[workers.w1]
token = "{WORKER_TOKEN}"
"""


def test_with_auth_on_no_one_but_the_controller_can_make_a_worker_run_or_stop_code(tmp_path: Path) -> None:
    """No secret configured anywhere: the worker's calls are guarded by what it handed at registration."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    cluster = Cluster(
        embedded_uri(tmp_path),
        client_token=TOKEN,
        worker_security=WorkerSecurity(token=WORKER_TOKEN),
        auth_policy=str(policy),
    )
    try:
        cluster.start_controller()
        worker = cluster.start_worker(FAULT_APP, worker_id="w1")
        client = cluster.client
        running = client.launch_process("farm", "until-stopped").run_id
        assert_eventually(lambda: client.get_run(running).state is S.RUNNING)

        async def direct(token: str, key: str) -> list[grpc.StatusCode]:
            """What a caller on the worker's machine gets: ExecuteProcess of made-up runs, StopRun."""
            channel = make_channel(worker.address, token=token)
            metadata = (("shards-worker-key", key),) if key else ()
            stub = pb_grpc.WorkerStub(channel)
            codes = []
            try:
                batch = pb.ExecuteProcessRequest(
                    runs=[pb.RunToExecute(run_id="made-up", scope_id="farm", process_id="until-stopped")]
                )
                # The guard refuses the stream as it opens, before any message: the run is sent
                # only once the stream is known to be open. (A write racing the refusal can be
                # told INTERNAL instead of the server's status: grpcio's grpc/grpc#36066.)
                call = stub.ExecuteProcess(metadata=metadata, timeout=3)  # type: ignore[call-arg]
                try:
                    await call.wait_for_connection()
                    await call.write(batch)
                    await call.read()
                    codes.append(await call.code())
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
                calls = (
                    lambda: stub.StopRun(pb.StopRunRequest(run_id=running), metadata=metadata, timeout=3),
                    lambda: stub.DescribeScope(
                        pb.DescribeScopeRequest(scope_id="farm"), metadata=metadata, timeout=3
                    ),
                )
                for unary in calls:
                    try:
                        await unary()
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as error:
                        codes.append(error.code())
            finally:
                await channel.close(None)
            return codes

        refused = [grpc.StatusCode.UNAUTHENTICATED] * 3
        assert cluster.run(direct("", "")) == refused
        assert cluster.run(direct(TOKEN, "")) == refused  # a client's token is no worker credential
        assert cluster.run(direct(WORKER_TOKEN, "")) == refused  # nor the worker's own
        assert cluster.run(direct("", "guessed")) == refused
        assert client.get_run(running).state is S.RUNNING  # the direct StopRun did nothing
        assert [r.process_id for r in client.list_runs("farm", "until-stopped")] == ["until-stopped"]
        # The controller's calls go through.
        client.stop_process("farm", "until-stopped")
        assert client.wait_run(running, 10).state is S.STOPPED
        done = client.launch_process("farm", "quick").run_id
        assert client.wait_run(done, 10).state is S.DONE
    finally:
        cluster.close()
