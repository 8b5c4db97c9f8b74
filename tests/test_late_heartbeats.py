"""A heartbeat read late (a stalled controller loop) says nothing of the runs sent after it was made.

The worker counts the runs it has received; its ExecuteProcess answer and every
heartbeat carry that count. A run that a report leaves out is judged gone only
if the report counts it as received. Before, a report made just before a run
arrived, read after a 2.5 s stall, found the run's confirmation old enough and
lost it (seen once in CI, in tests/test_leadership_load.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
from shards_controller.controller import Controller
from tests.support.apps import gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually

S = ProcessState


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    gate("late").clear()
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        yield cluster
    finally:
        gate("late").set()
        cluster.close()


def _controller(cluster: Cluster) -> Controller:
    assert cluster.controller is not None
    return cluster.controller.controller


def _running(cluster: Cluster, process_id: str) -> str:
    launched = cluster.client.launch_process("late", process_id)
    assert_eventually(lambda: cluster.client.get_run(launched.run_id).state is S.RUNNING)
    return launched.run_id


def _confirmed_long_ago(cluster: Cluster, run_id: str) -> None:
    """As after a stall: the run's confirmation is older than any report's possible age."""
    active = _controller(cluster)._active
    assert_eventually(lambda: run_id in active.acked_at)
    active.acked_at[run_id] = time.monotonic() - 60


def test_a_report_made_before_a_run_arrived_and_read_late_does_not_lose_it(cluster: Cluster) -> None:
    worker = cluster.start_worker(worker_id="w1")
    controller = _controller(cluster)
    run_id = _running(cluster, "gated")
    # RUNNING is stored when the run is handed out, before the worker has it.
    assert_eventually(lambda: worker.runner.received == 1)
    received = worker.runner.received
    assert worker.runner.running_ids() == [run_id]
    _confirmed_long_ago(cluster, run_id)

    # Made before the run arrived (it counts none), read now.
    assert cluster.run(controller.heartbeat("w1", worker.incarnation, set(), runs_received=received - 1))
    assert cluster.client.get_run(run_id).state is S.RUNNING

    # Made after it arrived and without it: the worker no longer has it.
    assert cluster.run(controller.heartbeat("w1", worker.incarnation, set(), runs_received=received))
    run = cluster.client.get_run(run_id)
    assert run.state is S.LOST and run.error == "worker w1 no longer runs it"


def test_a_worker_that_does_not_count_is_judged_by_the_confirmations_age(cluster: Cluster) -> None:
    worker = cluster.start_worker(worker_id="w1")
    controller = _controller(cluster)
    run_id = _running(cluster, "gated")
    _confirmed_long_ago(cluster, run_id)
    assert cluster.run(controller.heartbeat("w1", worker.incarnation, set(), runs_received=None))
    assert cluster.client.get_run(run_id).state is S.LOST
