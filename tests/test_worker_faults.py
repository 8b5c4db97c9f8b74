"""Integration: a worker tells the truth under ordinary faults (issue 10, items 5, 6, 8, 11)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
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
    assert_eventually(lambda: client.get_run(run_id).state is S.RUNNING)
    faults.stop_worker(worker, grace_s=0.5)
    # At once: no waiting for the controller to notice the silence (lost, 1 s later here).
    run = client.get_run(run_id)
    assert run.state is S.FAILED, run
    assert run.error == "worker shut down after 0.5 s grace (the run did not stop when asked)"
    assert client.get_process("farm", "stubborn").state is S.FAILED
    gate("stubborn:farm").set()
