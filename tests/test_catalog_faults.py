"""Integration: a launch or a define says what really happened (issue 10, items 3 and 4).

A launch that cannot run is refused (NOT_FOUND, or why its catalog cannot be
known) and leaves nothing behind; an app callback that raises is shown with
the app's own exception type and message: a define error, a failed run,
never a lost worker or an internal error.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import FailedPrecondition, NotFound, ProcessState, Unavailable
from tests.support.app_faults import BAD_ID_APP, CHILD_APP, NO_TENANT_APP, SLOW_LIST_APP
from tests.support.apps import GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually

S = ProcessState


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Cluster]:
    """A controller on the embedded store and no worker yet."""
    running = Cluster(embedded_uri(tmp_path), dispatch_timeout_s=0.5)
    try:
        running.start_controller()
        yield running
    finally:
        running.close()
        GATES.clear()


def _nothing_in(cluster: Cluster, scope: str) -> None:
    client = cluster.client
    assert client.list_processes(scope) == []
    assert client.list_runs(scope) == []
    assert scope not in {s.scope_id for s in client.list_scopes()}


def test_a_typo_with_no_worker_up_is_not_found_and_leaves_no_record(bare: Cluster) -> None:
    worker = bare.start_worker()
    client = bare.client
    defined = client.define_processes("farm")
    bare.stop_worker(worker)
    with pytest.raises(NotFound, match=r"'typo-xyz' is not defined in scope 'farm' \(known: .*quick"):
        client.launch_process("farm", "typo-xyz")
    assert client.list_processes("farm") == list(defined.processes)
    assert client.list_runs("farm") == []


def test_a_launch_into_an_undefined_scope_with_no_worker_says_so_and_leaves_nothing(bare: Cluster) -> None:
    with pytest.raises(FailedPrecondition, match="no live worker serves scope 'nowhere'"):
        bare.client.launch_process("nowhere", "quick")
    _nothing_in(bare, "nowhere")


def test_a_launch_whose_describe_times_out_is_unavailable_and_leaves_nothing(bare: Cluster) -> None:
    bare.start_worker(SLOW_LIST_APP)
    client = bare.make_client(retry_deadline_s=0.0)
    with pytest.raises(Unavailable, match=r"did not answer within 0.5 s"):
        client.launch_process("slow", "quick")
    _nothing_in(bare, "slow")


def test_concurrent_launches_of_undefined_ids_are_all_not_found(bare: Cluster) -> None:
    bare.start_worker()
    client = bare.client
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.launch_process, "farm", f"typo-{n}") for n in range(24)]
        outcomes = [f.exception() for f in futures]
    assert all(isinstance(o, NotFound) for o in outcomes), outcomes
    records = client.list_processes("farm")
    assert records and not {r.process_id for r in records} & {f"typo-{n}" for n in range(24)}
    assert client.list_runs("farm") == []


def test_get_scope_data_raising_is_shown_by_define_with_the_apps_error(bare: Cluster) -> None:
    bare.start_worker(NO_TENANT_APP)
    with pytest.raises(FailedPrecondition) as refused:
        bare.client.define_processes("tenant-9")
    message = refused.value.message
    assert "LookupError: no tenant 'tenant-9' in the app's database" in message, message
    assert "get_scope_data" in message and "no live worker" not in message
    # and a launch into the undefined scope is refused with the same words, creating nothing
    with pytest.raises(FailedPrecondition, match="LookupError: no tenant 'tenant-9'"):
        bare.client.launch_process("tenant-9", "quick")
    _nothing_in(bare, "tenant-9")


def test_a_launch_in_a_scope_whose_get_scope_data_raises_ends_failed_with_the_apps_error(
    bare: Cluster,
) -> None:
    client = bare.client
    bare.define_then_leave("tenant-9")  # defined while the app could still find the tenant
    bare.start_worker(NO_TENANT_APP)
    launched = client.launch_process("tenant-9", "quick")
    run = client.wait_run(launched.run_id, 10)
    assert run.state is S.FAILED, run
    assert run.error.startswith("LookupError: no tenant 'tenant-9' in the app's database"), run.error
    assert "INTERNAL" not in run.error
    # the worker's other runs are not harmed by it
    other = client.launch_process("farm", "quick")
    assert client.wait_run(other.run_id, 10).state is S.DONE


def test_a_definition_with_an_invalid_id_is_shown_by_define_as_the_apps_error(bare: Cluster) -> None:
    bare.start_worker(BAD_ID_APP)
    with pytest.raises(FailedPrecondition) as refused:
        bare.client.define_processes("farm")
    message = refused.value.message
    assert "InvalidArgument: process_id 'not a valid id!' is malformed" in message, message
    assert "get_process_list" in message


def test_a_child_launch_refused_by_the_controller_raises_the_projects_error_class(bare: Cluster) -> None:
    bare.start_worker(CHILD_APP)
    client = bare.client
    client.launch_process("farm", "gated")
    assert_eventually(lambda: client.get_process("farm", "gated").state is S.RUNNING)
    parent = client.launch_process("farm", "refused-child")
    assert client.wait_run(parent.run_id, 10).state is S.DONE
    assert client.get_process("farm", "refused-child").progress.message == "refused: FailedPrecondition"
    gate("farm").set()
