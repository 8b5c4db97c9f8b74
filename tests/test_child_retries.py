"""Integration: a child's retries are its own definition's (issue 15), and its parent waits for the last.

A child launched with ``context.run_process`` is retried by the controller as
a top-level run is: each attempt a run of its own, of the same record, a child
of the same parent. The parent's ``run_process`` returns the child's final
outcome. A stop of the child between attempts, or of its parent, cancels the
attempts still to come.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from shards import Client, ProcessState
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from tests.support.cluster import Cluster
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

S = ProcessState


def _attempts(client: Client, process_id: str) -> list[tuple[int, ProcessState, str]]:
    return sorted((r.attempt, r.state, r.parent_run_id) for r in client.list_runs("farm", process_id))


@pytest.mark.parametrize("parent_id", ["parent-of-flaky", "iso-parent-of-flaky"])
def test_a_child_that_fails_twice_is_retried_and_its_parent_sees_it_done(rc: Cluster, parent_id: str) -> None:
    client = rc.client
    parent_run = client.launch_process("farm", parent_id).run_id
    parent = client.wait_run(parent_run, 20)
    assert parent.state is S.DONE, parent
    assert client.get_process("farm", parent_id).progress.message == "child ended done"  # not "failed"
    # Each attempt a run of its own, a child of the same parent, numbered as a top-level run's.
    assert _attempts(client, "retry-fails-twice") == [
        (1, S.FAILED, parent_run),
        (2, S.FAILED, parent_run),
        (3, S.DONE, parent_run),
    ]
    child = client.get_process("farm", "retry-fails-twice")
    assert child.attempts_text == "attempt 3 of 5" and child.next_attempt_at is None
    assert child.progress.message == "attempt 3"  # the child's code saw its attempt number
    assert child.parent_run_id == parent_run


def test_a_child_inherits_no_retry_policy_from_its_parent(rc: Cluster) -> None:
    client = rc.client
    parent = client.wait_run(client.launch_process("farm", "retrying-parent").run_id, 10)
    assert parent.state is S.DONE  # it survives its child's failure
    assert client.get_process("farm", "retrying-parent").progress.message == "child ended failed"
    time.sleep(0.5)  # past FAST_RETRY's delays (0.1-0.2 s), had the child taken its parent's policy
    assert [(a, s) for a, s, _ in _attempts(client, "always-fails")] == [(1, S.FAILED)]


def test_following_the_retries_of_a_run_answers_its_last_attempt(rc: Cluster) -> None:
    client = rc.client
    first = client.launch_process("farm", "retry-fails-twice").run_id
    last = client.wait_run(first, 20, follow_retries=True)
    assert (last.state, last.attempt) == (S.DONE, 3) and last.run_id != first
    assert client.wait_run(first, 5).attempt == 1  # without following: the run asked for


def _between_attempts(client: Client) -> datetime:
    """Once the child failed and its attempt 2 is planned (3 s later): when."""

    def planned() -> datetime | None:
        child = client.get_process("farm", "retry-in-3-s")
        return child.next_attempt_at if child.state is S.FAILED else None

    at = assert_eventually(planned, timeout_s=10)
    assert at is not None
    return at


def _past(moment: datetime) -> None:
    """Sleep until half a second after ``moment``: an attempt planned then would have started."""
    time.sleep(max((moment - datetime.now(UTC)).total_seconds(), 0.0) + 0.5)


def test_a_stop_of_the_child_between_attempts_ends_the_wait_with_its_last_failure(rc: Cluster) -> None:
    client = rc.client
    parent_run = client.launch_process("farm", "parent-of-3-s-retry").run_id
    planned = _between_attempts(client)
    assert client.get_run(parent_run).state is S.RUNNING  # still waiting for its child
    stopped = client.stop_process("farm", "retry-in-3-s")
    assert (stopped.state, stopped.next_attempt_at) == (S.FAILED, None)  # stopped between attempts
    parent = client.wait_run(parent_run, 10)
    assert parent.state is S.FAILED
    assert parent.error == "child process 'retry-in-3-s' ended failed: RuntimeError: attempt 1 failed"
    _past(planned)
    assert [a for a, _, _ in _attempts(client, "retry-in-3-s")] == [1]


def test_a_stop_of_the_parent_cancels_its_childs_next_attempts_and_the_parent_ends_stopped(
    rc: Cluster,
) -> None:
    client = rc.client
    parent_run = client.launch_process("farm", "parent-of-3-s-retry").run_id
    planned = _between_attempts(client)
    client.stop_process("farm", "parent-of-3-s-retry")
    parent = client.wait_run(parent_run, 10)
    assert parent.state is S.STOPPED, parent
    child = client.get_process("farm", "retry-in-3-s")
    assert child.state is S.FAILED and child.next_attempt_at is None
    _past(planned)
    assert [a for a, _, _ in _attempts(client, "retry-in-3-s")] == [1]


def test_a_lost_child_is_retried_and_its_parent_sees_the_retry_done(tmp_path: Path) -> None:
    cluster = ProcessCluster(
        tmp_path, str(tmp_path / "shards.db"), "tests.support.isolated_apps:RUN_CONTROL_APP"
    )
    try:
        cluster.start_controller("a")
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        client = cluster.client()
        assert_eventually(lambda: len([w for w in client.list_workers() if w.alive]) == 2, 20)
        client.define_processes("farm")
        # The parent on w1; its child then goes to the worker with the most room: w2.
        request = pb.LaunchProcessRequest(
            scope_id="farm", process_id="parent-of-lost", preferred_worker_id="w1"
        )
        with grpc.insecure_channel(cluster.addresses[0]) as channel:
            parent_run = pb_grpc.ProcessControllerStub(channel).LaunchProcess(request, timeout=10).run_id
        assert_eventually(lambda: client.get_process("farm", "retry-after-loss").progress.rate > 0, 15)
        first = client.get_process("farm", "retry-after-loss")
        assert (first.attempt, first.worker_id, client.get_run(parent_run).worker_id) == (1, "w2", "w1")
        cluster.kill(cluster.workers["w2"], signal.SIGKILL)
        parent = client.wait_run(parent_run, 30)
        assert parent.state is S.DONE, parent
        assert client.get_process("farm", "parent-of-lost").progress.message == "child ended done"
        runs = {r.attempt: r for r in client.list_runs("farm", "retry-after-loss")}
        assert runs[1].state is S.LOST and runs[1].worker_id == "w2"
        assert runs[2].state is S.DONE and runs[2].worker_id == "w1"  # the parent's worker
        assert runs[2].parent_run_id == parent_run
    finally:
        cluster.close()


def test_a_parent_waits_for_its_childs_last_attempt_across_a_controller_restart(rc: Cluster) -> None:
    client = rc.client
    parent_run = client.launch_process("farm", "parent-of-slow-retry").run_id
    assert_eventually(lambda: client.get_process("farm", "retry-slowly").next_attempt_at is not None, 10)
    rc._client = None
    client.close()
    port = rc.address.rsplit(":", 1)[1]
    rc.stop_controller()
    rc.start_controller(listen=f"127.0.0.1:{port}")
    after = rc.client
    # The new leader arms the stored plan; the parent, asking again, follows the chain from the store.
    parent = after.wait_run(parent_run, 30)
    assert parent.state is S.FAILED, parent
    assert parent.error == "child process 'retry-slowly' ended failed: RuntimeError: attempt 3 failed"
    assert _attempts(after, "retry-slowly") == [
        (1, S.FAILED, parent_run),
        (2, S.FAILED, parent_run),
        (3, S.FAILED, parent_run),
    ]
