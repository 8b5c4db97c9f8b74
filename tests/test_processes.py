"""Integration: every ProcessController RPC against a real controller and worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from shards import FailedPrecondition, InvalidArgument, NotFound, ProcessState
from shards_worker import WorkerApp
from tests.support.apps import HA_APP, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually

S = ProcessState


def test_define_creates_idle_records_sorted_by_detail_level_then_name(cluster: Cluster) -> None:
    records = list(cluster.client.define_processes("farm").processes)
    assert {r.state for r in records} == {S.IDLE}
    assert [(r.detail_level, r.name.casefold()) for r in records] == sorted(
        (r.detail_level, r.name.casefold()) for r in records
    )
    failing = next(r for r in records if r.process_id == "failing")
    assert (failing.name, failing.detail_level, failing.warning) == ("Fails", 2, "It will fail")
    assert cluster.client.list_processes("farm") == records


def test_define_only_if_missing_keeps_what_is_there_and_clean_removes_what_is_gone(cluster: Cluster) -> None:
    client = cluster.client
    defined = client.define_processes("farm").processes
    assert client.define_processes("farm", only_if_missing=True).processes == defined
    # a process launched on the fly by a parent is not in the app's list: clean removes it once ended
    run = client.launch_process("farm", "adhoc-parent")
    assert client.wait_run(run.run_id, 10).state is S.DONE
    assert client.get_process("farm", "adhoc-child").state is S.DONE
    cleaned = client.define_processes("farm", clean=True).processes
    assert "adhoc-child" not in {r.process_id for r in cleaned}
    assert len(cleaned) == len(defined)


def test_list_filters_by_name_and_detail_level(cluster: Cluster) -> None:
    client = cluster.client
    client.define_processes("farm")
    assert {r.process_id for r in client.list_processes("farm", name_contains="QUICK")} == {
        "quick",
        "async-quick",
    }
    assert {r.detail_level for r in client.list_processes("farm", max_detail_level=2)} == {1, 2}


def test_launch_runs_to_done_with_progress_timestamps_and_duration(cluster: Cluster) -> None:
    client = cluster.client
    launched = client.launch_process("farm", "quick")  # scope defined on demand
    assert launched.process.state is S.SCHEDULED and launched.run_id
    run = client.wait_run(launched.run_id, 10)
    assert run.state is S.DONE and run.log_tail == ("quick ran",)
    record = client.get_process("farm", "quick")
    assert record.state is S.DONE and record.run_id == launched.run_id
    assert record.progress.message == "all" and record.progress.rate == 1.0
    assert record.running_since is not None and record.done_at is not None
    assert record.duration == record.done_at - record.running_since
    assert record.worker_id == cluster.workers[0].worker_id


def test_async_process_code_runs_too(cluster: Cluster) -> None:
    run = cluster.client.launch_process("farm", "async-quick")
    assert cluster.client.wait_run(run.run_id, 10).state is S.DONE
    assert cluster.client.get_process("farm", "async-quick").progress.rate == 1.0


def test_a_failing_process_records_its_error(cluster: Cluster) -> None:
    run = cluster.client.launch_process("farm", "failing")
    ended = cluster.client.wait_run(run.run_id, 10)
    assert ended.state is S.FAILED
    record = cluster.client.get_process("farm", "failing")
    assert record.error == "RuntimeError: the sheep escaped" and record.failed_at is not None
    assert record.progress.message == "about to fail"
    assert any("Traceback" in line for line in ended.log_tail)


def test_launching_an_active_process_is_refused_with_failed_precondition(cluster: Cluster) -> None:
    client = cluster.client
    first = client.launch_process("farm", "gated")
    with pytest.raises(FailedPrecondition, match=r"already (scheduled|running)"):
        client.launch_process("farm", "gated")
    gate("farm").set()
    assert client.wait_run(first.run_id, 10).state is S.DONE


def test_a_retried_launch_with_the_same_key_is_the_same_run(cluster: Cluster) -> None:
    client = cluster.client
    first = client.launch_process("farm", "quick", idempotency_key="k-1")
    again = client.launch_process("farm", "quick", idempotency_key="k-1")
    assert again.run_id == first.run_id and again.deduplicated
    client.wait_run(first.run_id, 10)
    assert client.launch_process("farm", "quick", idempotency_key="k-1").run_id == first.run_id
    assert len(client.list_runs("farm", "quick")) == 1
    with pytest.raises(InvalidArgument, match="idempotency key"):
        client.launch_process("farm", "failing", idempotency_key="k-1")


def test_relaunch_after_done_failed_and_stopped(cluster: Cluster) -> None:
    client = cluster.client
    for process_id, expected in (("quick", S.DONE), ("failing", S.FAILED)):
        runs = [client.launch_process("farm", process_id).run_id for _ in range(1)]
        assert client.wait_run(runs[0], 10).state is expected
        second = client.launch_process("farm", process_id)
        assert second.run_id != runs[0]
        assert client.wait_run(second.run_id, 10).state is expected
    first = client.launch_process("farm", "until-stopped")
    assert_eventually(lambda: client.get_process("farm", "until-stopped").state is S.RUNNING)
    client.stop_process("farm", "until-stopped")
    assert client.wait_run(first.run_id, 10).state is S.STOPPED
    again = client.launch_process("farm", "until-stopped")
    assert_eventually(lambda: client.get_process("farm", "until-stopped").progress.rate > 0)
    client.stop_process("farm", "until-stopped")
    assert client.wait_run(again.run_id, 10).state is S.STOPPED
    assert [r.run_id for r in client.list_runs("farm", "until-stopped")] == [again.run_id, first.run_id]


def test_stop_mid_run_goes_through_stop_requested_and_stopping_to_stopped(cluster: Cluster) -> None:
    client = cluster.client
    run = client.launch_process("farm", "until-stopped")
    assert_eventually(lambda: client.get_process("farm", "until-stopped").progress.rate > 0)
    stopping = client.stop_process("farm", "until-stopped")
    assert stopping.state in (S.STOP_REQUESTED, S.STOPPING, S.STOPPED)
    ended = client.wait_run(run.run_id, 10)
    assert ended.state is S.STOPPED
    record = client.get_process("farm", "until-stopped")
    assert record.stopped_at is not None and record.duration is not None


def test_stopping_a_process_that_is_not_active_is_refused(cluster: Cluster) -> None:
    client = cluster.client
    client.define_processes("farm")
    with pytest.raises(FailedPrecondition, match="not active"):
        client.stop_process("farm", "quick")
    with pytest.raises(NotFound):
        client.stop_process("farm", "no-such-process")


def test_dismiss_clears_the_messages_of_an_ended_process(cluster: Cluster) -> None:
    client = cluster.client
    run = client.launch_process("farm", "failing")
    client.wait_run(run.run_id, 10)
    dismissed = client.dismiss_process_messages("farm", "failing")
    assert dismissed.error == "" and dismissed.progress.message == "" and dismissed.state is S.IDLE
    assert client.get_process("farm", "failing").error == ""
    client.launch_process("farm", "gated")
    with pytest.raises(FailedPrecondition):
        client.dismiss_process_messages("farm", "gated")
    gate("farm").set()


def test_purge_removes_the_scope_but_not_while_something_runs(cluster: Cluster) -> None:
    client = cluster.client
    defined = client.define_processes("farm").processes
    run = client.launch_process("farm", "gated")
    with pytest.raises(FailedPrecondition, match="gated"):
        client.purge_processes("farm")
    gate("farm").set()
    client.wait_run(run.run_id, 10)
    assert client.purge_processes("farm") == len(defined)
    with pytest.raises(NotFound):
        client.get_process("farm", "quick")
    # the next view defines the scope again, as the original does: fresh records, no runs
    assert [r.process_id for r in client.list_processes("farm")] == [r.process_id for r in defined]
    assert not any(r.run_id for r in client.list_processes("farm"))


def test_unknown_process_and_malformed_ids(cluster: Cluster) -> None:
    client = cluster.client
    with pytest.raises(NotFound, match="not defined in scope 'farm'"):
        client.launch_process("farm", "no-such-process")
    with pytest.raises(InvalidArgument, match="scope_id"):
        client.list_processes("bad scope!")
    with pytest.raises(InvalidArgument, match="process_id"):
        client.launch_process("farm", "x" * 200)
    with pytest.raises(NotFound):
        client.get_run("no-such-run")


def test_list_workers_and_runs(cluster: Cluster) -> None:
    client = cluster.client
    [worker] = client.list_workers()
    assert worker.alive and worker.capacity == 4 and worker.worker_id == cluster.workers[0].worker_id
    run = client.launch_process("farm", "quick")
    client.wait_run(run.run_id, 10)
    [listed] = client.list_runs("farm")
    assert listed.run_id == run.run_id and listed.state is S.DONE and listed.worker_id == worker.worker_id
    assert client.get_run(run.run_id).state is S.DONE


def test_a_launch_with_no_worker_stays_scheduled_until_one_registers(tmp_path) -> None:
    from tests.support.cluster import embedded_uri

    lonely = Cluster(embedded_uri(tmp_path))
    try:
        lonely.start_controller()
        client = lonely.client
        with pytest.raises(FailedPrecondition, match="no live worker serves scope 'farm'"):
            client.define_processes("farm")
        # Nothing to say which processes the scope has: refused, not accepted to fail later.
        with pytest.raises(FailedPrecondition, match="no live worker serves scope 'farm'"):
            client.launch_process("farm", "quick")
        assert client.list_processes("farm") == []
        first = lonely.start_worker()
        client.define_processes("farm")
        lonely.stop_worker(first)
        assert_eventually(lambda: not any(w.alive for w in client.list_workers()))
        # A process the catalog has waits for a worker.
        run = client.launch_process("farm", "quick")
        assert client.get_process("farm", "quick").state is S.SCHEDULED
        lonely.start_worker()
        assert client.wait_run(run.run_id, 10).state is S.DONE
        assert client.get_process("farm", "quick").name == "Quick one"
    finally:
        lonely.close()


def test_capacity_queues_runs_until_a_slot_frees(tmp_path) -> None:
    from tests.support.cluster import embedded_uri

    small = Cluster(embedded_uri(tmp_path))
    try:
        small.start_controller()
        small.start_worker(capacity=1)
        client = small.client
        client.launch_process("farm", "gated")
        queued = client.launch_process("farm", "quick")
        assert_eventually(lambda: client.get_process("farm", "gated").state is S.RUNNING)
        assert client.get_process("farm", "quick").state is S.SCHEDULED
        gate("farm").set()
        assert client.wait_run(queued.run_id, 10).state is S.DONE
    finally:
        small.close()


def test_queued_runs_start_in_launch_order_and_those_no_worker_serves_keep_their_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_log = tmp_path / "runs.log"
    monkeypatch.setenv("SHARDS_TEST_RUN_LOG", str(run_log))
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        client = cluster.client
        # "unserved" was defined by a worker that has gone since.
        gone = cluster.start_worker(WorkerApp.of(HA_APP.get_process_list({}), scopes=("unserved",)))
        client.define_processes("unserved")
        cluster.stop_worker(gone)
        assert_eventually(lambda: not any(w.alive for w in client.list_workers()))
        cluster.start_worker(WorkerApp.of(HA_APP.get_process_list({}), scopes=("served",)), capacity=1)
        holder = client.launch_process("served", "gated")  # the only slot
        orphans = [client.launch_process("unserved", f"job-{n}").run_id for n in range(2)]
        queued = [client.launch_process("served", f"job-{n}").run_id for n in range(2)]
        gate("served").set()
        assert client.wait_run(holder.run_id, 10).state is ProcessState.DONE
        for run_id in queued:
            assert client.wait_run(run_id, 10).state is ProcessState.DONE
        # One slot: each ran after the one launched before it had ended.
        lines = [line.split() for line in run_log.read_text().splitlines()]
        assert [line[0] for line in lines] == queued
        # Passed over by each of the three passes (the ends of the holder and
        # of the two queued runs), and still first in line, in their order.
        assert cluster.controller is not None
        assert list(cluster.controller.controller._queue) == orphans
        assert all(client.get_run(run_id).state is ProcessState.SCHEDULED for run_id in orphans)
    finally:
        cluster.close()
