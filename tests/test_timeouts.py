"""Integration: time limits (issue 15, part 2), in a thread and in isolation, across a restart."""

from __future__ import annotations

import subprocess
import time

import grpc
import pytest

from shards import InvalidArgument, ProcessState
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker import ProcessDefinition
from tests.support.cluster import Cluster
from tests.support.isolated_apps import KILL_GRACE_S, STOP_GRACE_S, quick
from tests.support.processes import CLI, cli_env
from tests.support.waiting import assert_eventually

S = ProcessState
MARGIN_S = 1.5  # the stop's round trips, the end's report, a loaded machine


def test_a_definitions_time_limit_fails_a_run_in_a_thread(rc: Cluster) -> None:
    client = rc.client
    assert client.get_process("farm", "thread-timeout").timeout_s == 0.5
    began = time.monotonic()
    launched = client.launch_process("farm", "thread-timeout")
    run = client.wait_run(launched.run_id, 10)
    assert run.state is S.FAILED and run.error == "timed out after 0.5 s", run
    assert run.timed_out and run.timeout_s == 0.5
    assert run.deadline is not None and run.started_at is not None
    assert (run.deadline - run.started_at).total_seconds() == pytest.approx(0.5, abs=0.01)
    assert 0.5 <= time.monotonic() - began < 0.5 + MARGIN_S
    assert client.get_process("farm", "thread-timeout").state is S.FAILED


def test_a_launch_gives_its_own_time_limit(rc: Cluster) -> None:
    client = rc.client
    run = client.wait_run(client.launch_process("farm", "thread-loop", timeout_s=0.3).run_id, 10)
    assert run.state is S.FAILED and run.error == "timed out after 0.3 s"
    # Without one, the same process runs on until stopped.
    run_id = client.launch_process("farm", "thread-loop").run_id
    assert_eventually(lambda: client.get_run(run_id).progress.rate > 0)
    assert client.get_run(run_id).deadline is None
    client.stop_process("farm", "thread-loop")
    assert client.wait_run(run_id, 10).state is S.STOPPED


def test_a_time_limit_in_isolation_escalates_to_the_kill(rc: Cluster) -> None:
    client = rc.client
    began = time.monotonic()
    run = client.wait_run(client.launch_process("farm", "iso-timeout-kill").run_id, 10)
    took = time.monotonic() - began
    assert run.state is S.FAILED, run
    assert run.error.startswith("timed out after 0.5 s; killed (SIGKILL) after "), run.error
    assert 0.5 + STOP_GRACE_S + KILL_GRACE_S <= took < 0.5 + STOP_GRACE_S + KILL_GRACE_S + MARGIN_S


def test_the_deadline_holds_across_a_controller_restart(rc: Cluster) -> None:
    client = rc.client
    run_id = client.launch_process("farm", "thread-loop", timeout_s=2.0).run_id
    assert_eventually(lambda: client.get_run(run_id).progress.rate > 0)
    deadline = client.get_run(run_id).deadline
    if rc._client is not None:
        rc._client.close()
        rc._client = None
    port = rc.address.rsplit(":", 1)[1]
    rc.stop_controller()
    rc.start_controller(listen=f"127.0.0.1:{port}")  # same store and port: the worker finds it
    run = rc.client.wait_run(run_id, 15)
    assert run.state is S.FAILED and run.error == "timed out after 2 s", run
    assert run.deadline == deadline


@pytest.mark.parametrize("seconds", [-1.0, 0.0])
def test_a_time_limit_must_be_positive_and_nothing_is_stored(rc: Cluster, seconds: float) -> None:
    client = rc.client
    with pytest.raises(InvalidArgument, match=f"^timeout must be more than 0 s, got {seconds:g} s$"):
        client.launch_process("farm", "thread-quick", timeout_s=seconds)
    assert client.list_runs("farm", "thread-quick") == []
    assert client.get_process("farm", "thread-quick").state is S.IDLE


def test_a_child_defined_with_a_bad_time_limit_is_refused(rc: Cluster) -> None:
    request = pb.LaunchProcessRequest(
        scope_id="farm", process_id="adhoc", definition=pb.ProcessDefinition(process_id="adhoc")
    )
    request.definition.timeout.FromSeconds(-5)
    with grpc.insecure_channel(rc.address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ProcessControllerStub(channel).LaunchProcess(request, timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "definition.timeout must be more than 0 s, got -5 s"


def test_a_definition_refuses_a_time_limit_that_is_not_positive() -> None:
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="timeout_s must be a number of seconds > 0"):
            ProcessDefinition("p", quick, timeout_s=bad)
    assert ProcessDefinition("p", quick, timeout_s=3).info.timeout_s == 3


def test_shards_launch_time_limit_fails_the_run_timed_out(rc: Cluster) -> None:
    done = subprocess.run(
        [
            *CLI,
            "launch",
            "farm",
            "thread-loop",
            "--time-limit",
            "0.3",
            "--follow",
            "--controller",
            rc.address,
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # failed
    assert "timed out after 0.3 s" in done.stdout, done.stdout
