"""End-to-end: no log line is lost across a controller restart (issue 10, item 1).

A run logs 40 numbered lines over 2 s; its controller is killed (kill -9, or
SIGTERM with downtime) while it runs and comes back at the same address. The
run must end with its 40 lines, each once, in order.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

S = ProcessState
LINES = [f"line {n}" for n in range(40)]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path, str(tmp_path / "shards.db"), "tests.support.apps:FAULT_APP")
    try:
        cluster.start_controller("c1")
        cluster.start_worker("w1", capacity=4)
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize(("signum", "downtime_s"), [(signal.SIGKILL, 1.0), (signal.SIGTERM, 3.0)])
def test_a_run_keeps_every_log_line_across_a_controller_restart(
    processes: ProcessCluster, signum: int, downtime_s: float
) -> None:
    client = processes.client(retry_deadline_s=60)
    assert_eventually(lambda: any(w.worker_id == "w1" and w.alive for w in client.list_workers()), 30)
    run_id = client.launch_process("farm", "chatty").run_id
    assert_eventually(lambda: len(client.get_run(run_id).log_tail) >= 5, 10, 0.02)  # mid-run
    processes.kill(processes.controllers["c1"], signum)
    time.sleep(downtime_s)  # the downtime under test
    processes.start_controller("c1")
    run = client.wait_run(run_id, 60)
    assert run.state is S.DONE
    assert list(run.log_tail) == LINES
    page = client.get_run_log(run_id)  # the whole log too (issue 16), from the store
    assert (list(page.lines), page.ended) == (LINES, True)
    # And a run started just after the restart keeps all of its lines too.
    second = client.launch_process("farm", "chatty").run_id
    assert list(client.wait_run(second, 60).log_tail) == LINES
