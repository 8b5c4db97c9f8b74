"""End-to-end: a run dispatched to a worker that cannot be reached goes back to the queue, never lost.

A worker killed with SIGKILL stays in the controller's pool until the sweep
finds it silent (``worker_timeout_s``). A run dispatched to it meanwhile meets
a stream that never connects ("failed to connect to all addresses"): nothing
reached the worker, so the run did not start and runs elsewhere, once. Real
``shards controller`` and ``shards worker`` subprocesses.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shards import ProcessState
from shards.models import Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

S = ProcessState
APP = "tests.support.isolated_apps:RUN_CONTROL_APP"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path, str(tmp_path / "shards.db"), APP)
    try:
        cluster.start_controller("c1")
        yield cluster
    finally:
        cluster.close()


def _alive(cluster: ProcessCluster, *names: str) -> None:
    client = cluster.client()
    assert_eventually(
        lambda: {w.worker_id for w in client.list_workers() if w.alive} == set(names), timeout_s=30
    )


def _launch_on(cluster: ProcessCluster, worker_id: str, process_id: str) -> str:
    """Launch with ``worker_id`` preferred: the controller picks it while it still counts it alive."""
    request = pb.LaunchProcessRequest(scope_id="farm", process_id=process_id, preferred_worker_id=worker_id)
    with grpc.insecure_channel(cluster.addresses[0]) as channel:
        return str(pb_grpc.ProcessControllerStub(channel).LaunchProcess(request, timeout=10).run_id)


def _waited_s(run: Run) -> float:
    assert run.created_at is not None and run.started_at is not None
    return (run.started_at - run.created_at).total_seconds()


def test_a_run_sent_to_a_killed_worker_runs_once_on_the_other(processes: ProcessCluster) -> None:
    processes.start_worker("w1")
    processes.start_worker("w2")
    _alive(processes, "w1", "w2")
    client = processes.client()
    client.define_processes("farm")
    processes.kill(processes.workers["w1"], signal.SIGKILL)
    run_id = _launch_on(processes, "w1", "thread-quick")  # at once: w1 is still counted alive
    run = client.wait_run(run_id, 20)
    assert (run.state, run.worker_id, run.attempt) == (S.DONE, "w2", 1), run
    assert [r.run_id for r in client.list_runs("farm", "thread-quick")] == [run_id]  # ran exactly once
    print(f"\nlaunch -> start on w2: {_waited_s(run):.3f} s")


def test_with_no_other_worker_the_run_waits_scheduled_until_the_worker_is_back(
    processes: ProcessCluster,
) -> None:
    processes.start_worker("w1")
    _alive(processes, "w1")
    client = processes.client()
    client.define_processes("farm")
    processes.kill(processes.workers["w1"], signal.SIGKILL)
    run_id = _launch_on(processes, "w1", "thread-quick")
    # Swept as dead (3 s of silence by default): the run is still waiting, not lost.
    assert_eventually(lambda: not any(w.alive for w in client.list_workers()), timeout_s=20)
    waiting = client.get_run(run_id)
    assert (waiting.state, waiting.worker_id, waiting.started_at) == (S.SCHEDULED, "", None), waiting
    assert client.get_process("farm", "thread-quick").state is S.SCHEDULED
    processes.start_worker("w1")  # back, under its old id
    run = client.wait_run(run_id, 30)
    assert (run.state, run.worker_id, run.attempt) == (S.DONE, "w1", 1), run
    assert [r.run_id for r in client.list_runs("farm", "thread-quick")] == [run_id]
    print(f"\nlaunch -> start once w1 was back: {_waited_s(run):.3f} s")
