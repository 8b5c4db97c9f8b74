"""Integration: a controller restarted on the same embedded store keeps every record and run."""

from __future__ import annotations

import functools
import threading
from typing import Any

from shards import ProcessState
from tests.support.apps import gate
from tests.support.cluster import Cluster
from tests.support.waiting import assert_eventually

S = ProcessState


def _restart_controller(cluster: Cluster) -> None:
    if cluster._client is not None:
        cluster._client.close()
        cluster._client = None
    port = cluster.address.rsplit(":", 1)[1]
    cluster.stop_controller()
    cluster.start_controller(listen=f"127.0.0.1:{port}")  # where the workers look for it


def test_a_restarted_controller_keeps_every_record_and_the_run_history(cluster: Cluster) -> None:
    client = cluster.client
    client.define_processes("farm")
    client.define_processes("barn")
    for scope, process_id in (("farm", "quick"), ("farm", "failing"), ("barn", "quick")):
        client.wait_run(client.launch_process(scope, process_id).run_id, 10)
    client.dismiss_process_messages("farm", "failing")
    before = {scope: client.list_processes(scope) for scope in ("farm", "barn")}
    runs_before = {scope: client.list_runs(scope) for scope in ("farm", "barn")}
    _restart_controller(cluster)
    after_client = cluster.client
    assert {scope: after_client.list_processes(scope) for scope in ("farm", "barn")} == before
    assert {scope: after_client.list_runs(scope) for scope in ("farm", "barn")} == runs_before
    # and it goes on working: relaunch, with revisions still increasing
    newest = max(r.revision for records in before.values() for r in records)
    run = after_client.launch_process("farm", "quick")
    assert run.process.revision > newest
    assert_eventually(lambda: after_client.list_workers() != [])
    assert after_client.wait_run(run.run_id, 10).state is S.DONE


def test_a_run_survives_a_controller_restart_and_its_end_is_recorded(cluster: Cluster) -> None:
    client = cluster.client
    run = client.launch_process("farm", "gated")
    assert_eventually(lambda: client.get_process("farm", "gated").state is S.RUNNING)
    _restart_controller(cluster)
    after = cluster.client
    assert after.get_process("farm", "gated").state is S.RUNNING
    # the worker re-registers with what it runs, so the run is kept, not lost
    assert_eventually(
        lambda: [w.worker_id for w in after.list_workers() if w.alive] == [cluster.workers[0].worker_id]
    )
    gate("farm").set()
    assert after.wait_run(run.run_id, 10).state is S.DONE
    assert after.get_process("farm", "gated").state is S.DONE


def test_a_launch_made_before_a_restart_with_no_worker_is_dispatched_after_it(tmp_path) -> None:
    from tests.support.cluster import embedded_uri

    lonely = Cluster(embedded_uri(tmp_path))
    try:
        lonely.start_controller()
        lonely.define_then_leave("farm")
        run = lonely.client.launch_process("farm", "quick")
        _restart_controller(lonely)
        assert lonely.client.get_process("farm", "quick").state is S.SCHEDULED
        lonely.start_worker()
        assert lonely.client.wait_run(run.run_id, 10).state is S.DONE
    finally:
        lonely.close()


def test_a_stop_asked_before_the_worker_reports_to_a_new_controller_reaches_the_worker(
    cluster: Cluster,
) -> None:
    """A restored run is confirmed by the worker's first heartbeat; a stop asked before it waits for it."""
    client = cluster.client
    run = client.launch_process("farm", "until-stopped")
    assert_eventually(lambda: client.get_process("farm", "until-stopped").state is S.RUNNING)
    worker = cluster.workers[0]
    reporting = threading.Event()  # waited for on the worker's heartbeat thread
    liveness = worker._liveness
    assert liveness is not None
    heartbeat, register = liveness._heartbeat, liveness._register

    def held(call: Any) -> Any:
        reporting.wait(30)  # the worker is slow to find the new controller
        return call()

    liveness._heartbeat = functools.partial(held, heartbeat)  # type: ignore[method-assign]
    liveness._register = functools.partial(held, register)  # type: ignore[method-assign]
    _restart_controller(cluster)
    after = cluster.client
    after.stop_process("farm", "until-stopped")  # before the worker has reported the run
    assert after.get_process("farm", "until-stopped").state is S.STOP_REQUESTED
    reporting.set()
    assert after.wait_run(run.run_id, 15).state is S.STOPPED
