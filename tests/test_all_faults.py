"""Integration: one controller and one worker through every fault of issue 10, in sequence.

A real app (the tests' FAULT_APP and the app-fault processes) on one
controller (embedded store, fixed port so that a restart keeps it) and one
worker; at the end, every acknowledged launch ended as its code and the
faults imply, every log line of every run is readable, and no record exists
that nobody launched. Items covered, in order: 1 (log lines across a
controller restart), 3 (a typo), 4 (the app's own errors, a refused child),
5 (an async def blocking the worker's loop), 2 (paged lists), 9 (an unknown
run), 6 (a second worker with the same id), 11 (a run ignoring the worker's
shutdown). Items 7, 8 and 10 need auth, a busy loop or the CLI: their own tests.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shards import FailedPrecondition, NotFound, ProcessState
from shards_worker import WorkerApp, WorkerServer
from tests.support.app_faults import refused_child
from tests.support.apps import FAULT_APP, GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually

S = ProcessState


def _app() -> WorkerApp:
    from shards_worker import ProcessDefinition

    definitions = [
        *FAULT_APP.get_process_list(None),
        ProcessDefinition("refused-child", refused_child, name="Refused child"),
    ]

    def scope_data(scope_id: str) -> object:
        if scope_id.startswith("tenant-"):
            raise LookupError(f"no tenant {scope_id!r} in the app's database")
        return None

    return WorkerApp(get_process_list=lambda data: definitions, get_scope_data=scope_data)


def test_one_controller_and_one_worker_through_every_fault(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = Cluster(embedded_uri(tmp_path))
    expected: dict[str, tuple[ProcessState, str]] = {}  # run id -> end state, error prefix
    try:
        cluster.start_controller(listen=f"127.0.0.1:{port}")
        worker = cluster.start_worker(_app(), worker_id="the-worker")
        client = cluster.client
        client.define_processes("farm")

        # 1. a run logging across a controller restart keeps every line, in order
        chatty = client.launch_process("farm", "chatty").run_id
        assert_eventually(lambda: client.get_run(chatty).state is S.RUNNING)
        cluster.stop_controller()
        cluster.start_controller(listen=f"127.0.0.1:{port}")
        expected[chatty] = (S.DONE, "")
        assert_eventually(lambda: [w.worker_id for w in client.list_workers() if w.alive] == ["the-worker"])
        client.wait_run(chatty, 30)

        # 3. a typo is refused and leaves nothing
        with pytest.raises(NotFound):
            client.launch_process("farm", "typo-xyz")

        # 4. the app's own errors, as they are
        with pytest.raises(FailedPrecondition, match="LookupError: no tenant 'tenant-1'"):
            client.define_processes("tenant-1")
        expected[client.launch_process("farm", "failing").run_id] = (
            S.FAILED,
            "RuntimeError: the sheep escaped",
        )
        holder = client.launch_process("farm", "gated").run_id
        assert_eventually(lambda: client.get_run(holder).state is S.RUNNING)
        expected[client.launch_process("farm", "refused-child").run_id] = (S.DONE, "")

        # 5. an async def that blocks the worker's loop harms no other run
        blocker = client.launch_process("farm", "blocking-async").run_id
        expected[blocker] = (S.DONE, "")
        expected[client.launch_process("farm", "quick").run_id] = (S.DONE, "")
        for run_id in (blocker, *expected):
            if run_id != holder:
                client.wait_run(run_id, 30)
        gate("farm").set()
        expected[holder] = (S.DONE, "")
        client.wait_run(holder, 30)

        # 2 and 9: lists page, an unknown run is NOT_FOUND
        assert len(client.list_processes("farm", page_size=3)) == len(client.list_processes("farm"))
        with pytest.raises(NotFound, match="does not exist"):
            client.get_run("19b0000000-0000000000000000")

        # 6. a second worker with the same id is refused, the first goes on
        twin = WorkerServer(_app(), cluster.address, worker_id="the-worker", progress_interval_s=0.02)

        async def start_twin() -> str:
            await twin.start()
            await twin.refused.wait()
            refusal = twin.refusal
            await twin.stop(0.5)
            return refusal

        assert "the-worker" in cluster.run(start_twin(), 30)
        after_twin = client.launch_process("farm", "quick").run_id
        expected[after_twin] = (S.DONE, "")
        client.wait_run(after_twin, 30)

        # 11. a run that ignores the worker's shutdown ends failed at once, saying why
        stubborn = client.launch_process("farm", "stubborn").run_id
        # The worker has it (``running`` is stored as the run is handed out, before that).
        assert_eventually(lambda: stubborn in worker.runner.running_ids())
        cluster.stop_worker(worker, grace_s=0.5)
        expected[stubborn] = (S.FAILED, "worker shut down after 0.5 s grace")
        gate("stubborn:farm").set()

        # every acknowledged launch ended as its code and the faults imply
        for run_id, (state, error) in expected.items():
            run = client.get_run(run_id)
            assert run.state is state and run.error.startswith(error), run
        runs = {r.run_id: r for r in client.list_runs("farm", limit=100, include_details=True)}
        # every log line is readable: the restart lost none of chatty's 40, in order
        lines = [line for line in runs[chatty].log_tail if line.startswith("line ")]
        assert lines == [f"line {n}" for n in range(40)], runs[chatty].log_tail
        assert "quick ran" in runs[after_twin].log_tail
        # no record nobody launched: the launched ones, the children, and the defined (idle) rest
        launched = {runs[run_id].process_id for run_id in expected} | {"gated"}
        for record in client.list_processes("farm"):
            assert record.process_id in launched or record.state is S.IDLE, record
        assert "typo-xyz" not in {r.process_id for r in client.list_processes("farm")}
        assert client.list_processes("tenant-1") == []
        assert set(runs) <= set(expected) | {holder} | {r.run_id for r in runs.values() if r.parent_run_id}
    finally:
        for event in GATES.values():
            event.set()
        cluster.close()
        GATES.clear()
