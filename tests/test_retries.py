"""Integration: retries (issue 15, part 3): attempts as new runs of one record, stops, restarts, loss."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from shards import ProcessState, RetryPolicy
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker import ProcessDefinition
from tests.support.cluster import Cluster
from tests.support.isolated_apps import always_fails
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

S = ProcessState


def _attempts(cluster: Cluster, process_id: str) -> list[tuple[int, ProcessState]]:
    return sorted((run.attempt, run.state) for run in cluster.client.list_runs("farm", process_id))


@pytest.mark.parametrize("process_id", ["retry-fails-twice", "iso-retry-fails-twice"])
def test_a_process_that_fails_twice_ends_done_on_attempt_3(rc: Cluster, process_id: str) -> None:
    client = rc.client
    first = client.launch_process("farm", process_id).run_id

    def done() -> bool:
        record = client.get_process("farm", process_id)
        return record.state is S.DONE and record.attempt == 3

    assert_eventually(done, timeout_s=15)
    assert _attempts(rc, process_id) == [(1, S.FAILED), (2, S.FAILED), (3, S.DONE)]
    record = client.get_process("farm", process_id)
    assert record.attempts_text == "attempt 3 of 5" and record.next_attempt_at is None
    assert record.progress.message == "attempt 3"
    runs = {run.attempt: run for run in client.list_runs("farm", process_id)}
    assert runs[1].run_id == first and runs[1].error == "RuntimeError: attempt 1 failed"
    assert len({run.run_id for run in runs.values()}) == 3  # each attempt a run of its own


def test_the_policy_covers_only_the_end_states_it_names(rc: Cluster) -> None:
    client = rc.client
    run = client.wait_run(client.launch_process("farm", "retry-failed-only").run_id, 10)
    assert run.state is S.FAILED
    record = client.get_process("farm", "retry-failed-only")
    assert record.next_attempt_at is None and record.attempts_text == "attempt 1 of 5"
    assert len(client.list_runs("farm", "retry-failed-only")) == 1


def test_a_stop_between_attempts_cancels_the_rest(rc: Cluster) -> None:
    client = rc.client
    client.wait_run(client.launch_process("farm", "retry-slowly").run_id, 10)
    record = client.get_process("farm", "retry-slowly")
    assert record.state is S.FAILED and record.next_attempt_at is not None  # attempt 2 in 1.5 s
    stopped = client.stop_process("farm", "retry-slowly")
    assert stopped.next_attempt_at is None and stopped.state is S.FAILED
    time.sleep(2.0)  # past the time attempt 2 had: nothing may start
    assert _attempts(rc, "retry-slowly") == [(1, S.FAILED)]
    assert client.get_process("farm", "retry-slowly").next_attempt_at is None


def test_the_next_attempt_is_stored_and_runs_once_after_a_controller_restart(rc: Cluster) -> None:
    client = rc.client
    client.wait_run(client.launch_process("farm", "retry-slowly").run_id, 10)
    planned = client.get_process("farm", "retry-slowly").next_attempt_at
    assert planned is not None
    rc._client = None
    client.close()
    port = rc.address.rsplit(":", 1)[1]
    rc.stop_controller()
    rc.start_controller(listen=f"127.0.0.1:{port}")
    after = rc.client
    # Attempts 2 and 3 each run once (3 is the last: 3 attempts in all).
    assert_eventually(
        lambda: _attempts(rc, "retry-slowly") == [(1, S.FAILED), (2, S.FAILED), (3, S.FAILED)], 15
    )
    record = after.get_process("farm", "retry-slowly")
    assert record.next_attempt_at is None and record.attempts_text == "attempt 3 of 3"
    second = next(r for r in after.list_runs("farm", "retry-slowly") if r.attempt == 2)
    assert second.created_at is not None and second.created_at >= planned  # not before its time


def test_a_users_launch_starts_again_at_attempt_1(rc: Cluster) -> None:
    client = rc.client
    client.wait_run(client.launch_process("farm", "retry-slowly").run_id, 10)
    assert client.get_process("farm", "retry-slowly").next_attempt_at is not None
    run = client.wait_run(client.launch_process("farm", "retry-slowly").run_id, 10)
    assert run.attempt == 1
    time.sleep(0.5)
    assert [a for a, _ in _attempts(rc, "retry-slowly")] == [1, 1]  # the old plan died with the launch


def test_a_lost_run_is_retried_on_another_worker(tmp_path: Path) -> None:
    cluster = ProcessCluster(
        tmp_path, str(tmp_path / "shards.db"), "tests.support.isolated_apps:RUN_CONTROL_APP"
    )
    try:
        cluster.start_controller("a")
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        client = cluster.client()
        assert_eventually(lambda: len([w for w in client.list_workers() if w.alive]) == 2, timeout_s=20)
        client.define_processes("farm")
        first = client.launch_process("farm", "retry-after-loss").run_id
        assert_eventually(lambda: client.get_run(first).progress.rate > 0, timeout_s=15)
        run = client.get_run(first)
        cluster.kill(cluster.workers[run.worker_id], signal.SIGKILL)

        def retried() -> bool:
            record = client.get_process("farm", "retry-after-loss")
            return record.state is S.DONE and record.attempt == 2

        assert_eventually(retried, timeout_s=20)
        runs = {r.attempt: r for r in client.list_runs("farm", "retry-after-loss")}
        assert runs[1].state is S.LOST and runs[1].worker_id == run.worker_id
        assert runs[2].state is S.DONE and runs[2].worker_id != run.worker_id
    finally:
        cluster.close()


def test_a_retry_policy_with_no_attempt_is_refused_at_definition_time() -> None:
    with pytest.raises(ValueError, match=r"retry\.max_attempts must be within 1\.\.1000"):
        ProcessDefinition("p", always_fails, retry=RetryPolicy(max_attempts=0))
    with pytest.raises(ValueError, match=r"retry\.on: a retry follows a failed or lost run, not stopped"):
        ProcessDefinition("p", always_fails, retry=RetryPolicy(on=(S.STOPPED,)))
    with pytest.raises(ValueError, match=r"retry\.backoff must not be negative"):
        ProcessDefinition("p", always_fails, retry=RetryPolicy(backoff_s=-1))
    assert RetryPolicy(backoff_s=1, backoff_multiplier=3, max_backoff_s=5).delay_s(3) == 5
    assert RetryPolicy(backoff_s=1, backoff_multiplier=3, max_backoff_s=50).delay_s(2) == 3


def test_a_child_defined_with_zero_attempts_is_refused_and_nothing_is_stored(rc: Cluster) -> None:
    request = pb.LaunchProcessRequest(
        scope_id="farm",
        process_id="adhoc-retry",
        definition=pb.ProcessDefinition(process_id="adhoc-retry", retry=pb.RetryPolicy(max_attempts=0)),
    )
    with grpc.insecure_channel(rc.address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ProcessControllerStub(channel).LaunchProcess(request, timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "definition.retry.max_attempts must be within 1..1000 (the first run counts), got 0"
    )
    assert "adhoc-retry" not in {r.process_id for r in rc.client.list_processes("farm")}


def test_the_cli_table_shows_the_attempt_and_the_next_one() -> None:
    import io
    from datetime import UTC, datetime

    from shards.cli_render import make_console, process_table
    from shards.models import ProcessRecord

    record = ProcessRecord(
        "farm",
        "flaky",
        state=S.FAILED,
        retry=RetryPolicy(max_attempts=5),
        attempt=2,
        next_attempt_at=datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC),
    )
    out = io.StringIO()
    console = make_console(out)
    console.width = 200
    console.print(process_table([record]))
    assert "attempt 2 of 5" in out.getvalue() and "next attempt at" in out.getvalue()
