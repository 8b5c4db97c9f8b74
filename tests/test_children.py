"""Integration: run_process children, survive_failure / survive_stopping, cascade stop."""

from __future__ import annotations

import pytest

from shards import ProcessState
from tests.support.cluster import Cluster
from tests.support.waiting import assert_eventually

S = ProcessState


@pytest.mark.parametrize(
    ("survive_failure", "survive_stopping"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_a_failed_child(cluster: Cluster, survive_failure: bool, survive_stopping: bool) -> None:
    parent_id = f"parent-of-failing-{'sf' if survive_failure else 'nf'}-{'ss' if survive_stopping else 'ns'}"
    client = cluster.client
    run = client.launch_process("farm", parent_id)
    parent = client.wait_run(run.run_id, 10)
    child = client.get_process("farm", "failing")
    assert child.state is S.FAILED and child.parent_run_id == run.run_id
    [child_run] = client.list_runs("farm", "failing")
    assert child_run.parent_run_id == run.run_id  # a record and a run of its own, linked to the parent
    if survive_failure:
        assert parent.state is S.DONE
        assert client.get_process("farm", parent_id).progress.message == "child ended failed"
    else:
        assert parent.state is S.FAILED
        assert parent.error == "child process 'failing' ended failed: RuntimeError: the sheep escaped"


@pytest.mark.parametrize(
    ("survive_failure", "survive_stopping"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_a_stopped_child(cluster: Cluster, survive_failure: bool, survive_stopping: bool) -> None:
    parent_id = (
        f"parent-of-until-stopped-{'sf' if survive_failure else 'nf'}-{'ss' if survive_stopping else 'ns'}"
    )
    client = cluster.client
    run = client.launch_process("farm", parent_id)
    assert_eventually(lambda: client.get_process("farm", "until-stopped").progress.rate > 0)
    client.stop_process("farm", "until-stopped")  # the child only
    parent = client.wait_run(run.run_id, 10)
    assert client.get_process("farm", "until-stopped").state is S.STOPPED
    if survive_stopping:
        assert parent.state is S.DONE
        assert client.get_process("farm", parent_id).progress.message == "child ended stopped"
    else:
        assert parent.state is S.STOPPED


def test_stopping_a_parent_stops_its_running_children(cluster: Cluster) -> None:
    client = cluster.client
    parent_id = "parent-of-until-stopped-sf-ss"  # survives anything, so only the cascade can stop it
    run = client.launch_process("farm", parent_id)
    assert_eventually(lambda: client.get_process("farm", "until-stopped").progress.rate > 0)
    client.stop_process("farm", parent_id)
    assert client.wait_run(run.run_id, 10).state is S.STOPPED
    child = client.get_process("farm", "until-stopped")
    assert child.state is S.STOPPED and child.parent_run_id == run.run_id


def test_async_code_runs_children_too(cluster: Cluster) -> None:
    run = cluster.client.launch_process("farm", "async-parent")
    assert cluster.client.wait_run(run.run_id, 10).state is S.DONE
    assert cluster.client.get_process("farm", "async-parent").progress.message == "child ended done"


def test_a_child_defined_by_its_parent_runs_where_its_code_is(cluster: Cluster) -> None:
    cluster.start_worker()  # a second worker that does not know the ad-hoc child
    client = cluster.client
    for _ in range(3):
        run = client.launch_process("farm", "adhoc-parent")
        assert client.wait_run(run.run_id, 10).state is S.DONE
        child = client.get_process("farm", "adhoc-child")
        assert child.state is S.DONE and child.name == "Ad-hoc child" and child.detail_level == 3
        parent = client.get_process("farm", "adhoc-parent")
        assert child.worker_id == parent.worker_id


def test_a_child_does_not_need_a_free_slot(tmp_path) -> None:
    from tests.support.cluster import embedded_uri

    single = Cluster(embedded_uri(tmp_path))
    try:
        single.start_controller()
        single.start_worker(capacity=1)
        run = single.client.launch_process("farm", "async-parent")
        assert single.client.wait_run(run.run_id, 10).state is S.DONE
    finally:
        single.close()
