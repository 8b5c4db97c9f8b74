"""End-to-end: a worker stays alive whatever its process code does (issue 10, items 5 and 6).

Real ``shards controller`` and ``shards worker`` subprocesses: the worker's
event loop must be its own (in-process tests share one loop with the controller).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
from tests.support.apps import BLOCK_S
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

S = ProcessState
# Short timeouts, so a worker whose heartbeats stop is lost well within the block.
FAST_ENV = {"SHARDS_WORKER_TIMEOUT_S": "1.0", "SHARDS_HEARTBEAT_INTERVAL_S": "0.2"}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path, str(tmp_path / "shards.db"), "tests.support.apps:FAULT_APP", FAST_ENV)
    try:
        cluster.start_controller("c1")
        yield cluster
    finally:
        cluster.close()


def test_an_async_process_that_blocks_the_loop_loses_no_run_and_is_named_in_the_log(
    processes: ProcessCluster,
) -> None:
    assert 2 * float(FAST_ENV["SHARDS_WORKER_TIMEOUT_S"]) < BLOCK_S
    worker = processes.start_worker("w1", capacity=4)
    client = processes.client()
    assert_eventually(lambda: any(w.worker_id == "w1" and w.alive for w in client.list_workers()), 30)
    healthy = client.launch_process("farm", "until-stopped").run_id
    assert_eventually(lambda: client.get_run(healthy).state is S.RUNNING)
    blocker = client.launch_process("farm", "blocking-async").run_id
    assert client.wait_run(blocker, 30).state is S.DONE
    # The threaded run went on through the block: the worker never went silent.
    assert client.get_run(healthy).state is S.RUNNING
    assert [w.alive for w in client.list_workers() if w.worker_id == "w1"] == [True]
    blocked = re.compile(rf"event loop was blocked for about (\d+\.\d) s by run {blocker}.*")
    logged = worker.wait_for(blocked, 10)
    assert float(logged.group(1)) >= BLOCK_S - 0.5
    assert "blocking-async" in logged.group(0) and "plain def" in logged.group(0)
    client.stop_process("farm", "until-stopped")
    assert client.wait_run(healthy, 10).state is S.STOPPED
    assert worker.stop(signal.SIGTERM) == 0


def test_a_second_worker_with_a_live_workers_id_is_refused_and_exits_2_naming_the_live_one(
    processes: ProcessCluster,
) -> None:
    first = processes.start_worker("w1", capacity=4)
    client = processes.client()
    live = assert_eventually(
        lambda: [w for w in client.list_workers() if w.worker_id == "w1" and w.alive], 30
    )
    run_id = client.launch_process("farm", "until-stopped").run_id
    assert_eventually(lambda: client.get_run(run_id).state is S.RUNNING)
    second = processes.start_worker("w1", capacity=4)
    try:
        assert second.popen.wait(20) == 2
    finally:
        second.stop()
    output = second.output()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: worker id 'w1' is taken by a live worker at {live[0].address}: "
        "give this worker another --worker-id (or stop that one first)"
    ], output
    assert "Traceback" not in output
    controller_log = processes.controllers["c1"].output()
    assert "refused worker w1 at 127.0.0.1:" in controller_log and live[0].address in controller_log
    # The first worker never noticed: same registration, its run still running.
    assert [(w.address, w.incarnation) for w in client.list_workers()] == [
        (live[0].address, live[0].incarnation)
    ]
    assert client.get_run(run_id).state is S.RUNNING
    client.stop_process("farm", "until-stopped")
    assert client.wait_run(run_id, 10).state is S.STOPPED
    assert first.popen.poll() is None
