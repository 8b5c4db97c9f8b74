"""Failover with real processes: two controllers on one MongoDB (FerretDB), workers, kill -9.

The lease timing is the default (ttl 2 s, standby retries every 0.5 s), so the
take-over times printed here are the documented ones.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import AsyncClient, ProcessState, WatchEvent
from shards_controller.store.mongo import MongoStore
from tests.support.mongo import MongoTarget
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

pytestmark = [pytest.mark.mongo, pytest.mark.e2e]
S = ProcessState
KILLS = int(os.environ.get("SHARDS_FAILOVER_KILLS", "3"))


@pytest.fixture
def ha(tmp_path: Path, fresh_mongo: MongoTarget) -> Iterator[ProcessCluster]:
    store = f"{fresh_mongo.uri.rstrip('/')}/{fresh_mongo.database}"
    cluster = ProcessCluster(
        tmp_path, store, "tests.support.apps:HA_APP", env={"SHARDS_TEST_RUN_LOG": str(tmp_path / "runs.log")}
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _start(cluster: ProcessCluster, workers: tuple[str, ...] = ("w1",)) -> None:
    cluster.start_controller("a")
    assert_eventually(lambda: cluster.leader() == "a", timeout_s=15)
    cluster.start_controller("b")
    for name in workers:
        cluster.start_worker(name)
    client = cluster.client()
    assert_eventually(
        lambda: {w.worker_id for w in client.list_workers() if w.alive} == set(workers), timeout_s=15
    )


def _executions(tmp_path: Path) -> list[tuple[str, str]]:
    log = tmp_path / "runs.log"
    if not log.exists():
        return []
    return [tuple(line.split()[:2]) for line in log.read_text().splitlines() if line]  # type: ignore[misc]


def _dedupe(states: list[ProcessState]) -> list[ProcessState]:
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] is not s]


def test_killing_the_leader_while_launching_loses_no_launch_and_runs_none_twice(
    ha: ProcessCluster, tmp_path: Path
) -> None:
    _start(ha, workers=("w1", "w2"))
    client = ha.client()
    events: list[WatchEvent] = []
    watch = client.watch_processes("ha")

    failures: list[BaseException] = []

    def watching() -> None:
        try:
            for event in watch:
                events.append(event)
        except BaseException as error:  # shown by the assertion below
            failures.append(error)

    acknowledged: list[tuple[int, str, float]] = []  # job, run id, when acknowledged
    stop = threading.Event()

    def launching() -> None:
        n = 0
        while not stop.is_set():
            launched = client.launch_process("ha", f"job-{n}")
            acknowledged.append((n, launched.run_id, time.monotonic()))
            n += 1

    watcher = threading.Thread(target=watching, daemon=True)
    watcher.start()
    launcher = threading.Thread(target=launching, daemon=True)
    launcher.start()

    def acknowledged_at_least(count: int) -> bool:
        return len(acknowledged) >= count

    def acknowledged_after(moment: float) -> bool:
        return any(at > moment for _, _, at in acknowledged)

    takeovers: list[float] = []
    for _ in range(KILLS):
        before = len(acknowledged)
        assert_eventually(functools.partial(acknowledged_at_least, before + 5), timeout_s=30)
        leader = ha.leader()
        assert leader is not None
        ha.kill(ha.controllers[leader])
        killed_at = time.monotonic()
        assert_eventually(functools.partial(acknowledged_after, killed_at), timeout_s=30)
        takeovers.append(min(at for _, _, at in acknowledged if at > killed_at) - killed_at)
        ha.start_controller(leader)  # back as a standby
    stop.set()
    launcher.join(60)
    print(
        f"\ntake-over (kill -9 -> next launch acknowledged) over {len(takeovers)} kills: "
        f"median {statistics.median(takeovers):.2f}s, max {max(takeovers):.2f}s; "
        f"{len(acknowledged)} launches"
    )
    # Measured 2.3-2.7 s max over 6 quiet runs; the 3 s target is measured by
    # `python -m bench.mongo_side --only failover`. Under CI's four test processes on two
    # cores a take-over measured 5.1 s: this bound only catches a take-over that hangs.
    assert max(takeovers) <= 8.0

    for _, run_id, _ in acknowledged:
        assert client.wait_run(run_id, 60).state is S.DONE, run_id
    executions = _executions(tmp_path)
    run_ids = [run_id for run_id, _ in executions]
    assert sorted(run_ids) == sorted(run_id for _, run_id, _ in acknowledged)  # each ran exactly once
    assert len({process for _, process in executions}) == len(executions)  # no process ran twice

    def every_state_seen() -> bool:
        assert not failures, failures
        for n, _, _ in acknowledged:
            seen = [e for e in list(events) if e.process and e.process.process_id == f"job-{n}"]
            states = _dedupe([e.process.state for e in seen if e.process])
            told = [(e.type.name, e.revision, e.process.state.name) for e in seen if e.process]
            assert states[-1:] == [S.DONE], (n, told)
            assert S.SCHEDULED in states and S.RUNNING in states, (n, told)
        return True

    assert_eventually(every_state_seen, timeout_s=30)


def _load_records(uri: str) -> dict[tuple[str, str], tuple[ProcessState, str]]:
    async def load() -> dict[tuple[str, str], tuple[ProcessState, str]]:
        store = MongoStore(uri)
        await store.open()
        try:
            return {r.key: (r.state, r.run_id) for r in await store.load_records()}
        finally:
            await store.close()

    return asyncio.run(load())


def test_the_first_launch_after_an_idle_leader_is_killed_goes_to_the_new_leader(ha: ProcessCluster) -> None:
    """A launch on a stream whose controller has died is retried on the new leader.

    Twice, as a supervisor would restart the dead controller: the second time
    the client has met the standby first and been sent on to the leader.
    """
    _start(ha)

    async def launch_kill_launch(leader: str, successor: str) -> None:
        async with AsyncClient(ha.addresses, timeout_s=3.0, retry_deadline_s=30.0) as client:
            first = await client.launch_process("ha", "quick")
            ha.kill(ha.controllers[leader])  # while the client's stream to it is idle
            launched = await client.launch_process("ha", "failing")
            assert ha.leader() == successor
            assert (await client.wait_run(launched.run_id, 30)).state is S.FAILED
            # The kill may have come before the first run reached its worker:
            # the new leader then gives it to a worker again, and it runs once.
            assert (await client.wait_run(first.run_id, 30)).state is S.DONE

    asyncio.run(launch_kill_launch("a", "b"))
    ha.start_controller("a")  # back as a standby
    asyncio.run(launch_kill_launch("b", "a"))


def test_a_paused_leader_that_comes_back_cannot_write_over_the_new_leader(ha: ProcessCluster) -> None:
    _start(ha)
    client = ha.client()
    first = client.launch_process("ha", "until-stopped")
    assert_eventually(lambda: client.get_process("ha", "until-stopped").state is S.RUNNING)
    old = ha.controllers["a"]
    ha.kill(old, signal.SIGSTOP)  # paused, still holding its sockets and its view of the world
    assert_eventually(lambda: ha.leader() == "b", timeout_s=15)
    # The new leader changes what the old one believes: the run is stopped, another one done.
    assert_eventually(lambda: client.get_process("ha", "until-stopped").state is S.RUNNING, timeout_s=15)
    client.stop_process("ha", "until-stopped")
    assert client.wait_run(first.run_id, 30).state is S.STOPPED
    second = client.launch_process("ha", "quick")
    assert client.wait_run(second.run_id, 30).state is S.DONE
    expected = _load_records(ha.store)
    ha.kill(old, signal.SIGCONT)
    # It wakes up to silent workers and an expired lease: it must step down, not write.
    old.wait_for(__import__("re").compile("stepped down"), timeout_s=15)
    assert _load_records(ha.store) == expected
    assert expected[("ha", "until-stopped")] == (S.STOPPED, first.run_id)
    assert ha.leader() == "b"
    third = client.launch_process("ha", "until-stopped")
    assert_eventually(lambda: client.get_process("ha", "until-stopped").state is S.RUNNING, timeout_s=15)
    assert client.get_process("ha", "until-stopped").run_id == third.run_id
    client.stop_process("ha", "until-stopped")


def test_a_worker_that_dies_during_the_take_over_has_its_runs_lost(ha: ProcessCluster) -> None:
    _start(ha, workers=("w1", "w2"))
    client = ha.client()
    runs = {scope: client.launch_process(scope, "until-stopped") for scope in ("one", "two")}
    for scope in runs:

        def reporting(scope: str = scope) -> bool:
            return client.get_process(scope, "until-stopped").progress.rate > 0

        assert_eventually(reporting)
    doomed = client.get_process("one", "until-stopped").worker_id
    survivor_scope = "two" if client.get_process("two", "until-stopped").worker_id != doomed else None
    ha.kill(ha.controllers["a"])
    ha.kill(ha.workers[doomed])
    killed_at = time.monotonic()
    assert_eventually(lambda: client.get_process("one", "until-stopped").state is S.LOST, timeout_s=20)
    lost = client.get_process("one", "until-stopped")
    print(f"\nrun of the dead worker lost {time.monotonic() - killed_at:.2f}s after the kills")
    assert doomed in lost.error
    if survivor_scope is not None:
        # the other worker's run is kept, and its progress flows through the new leader
        rate = client.get_process(survivor_scope, "until-stopped").progress.rate
        assert client.get_process(survivor_scope, "until-stopped").state is S.RUNNING
        assert_eventually(lambda: client.get_process(survivor_scope, "until-stopped").progress.rate > rate)
        client.stop_process(survivor_scope, "until-stopped")
        assert client.wait_run(runs[survivor_scope].run_id, 30).state is S.STOPPED


def test_a_whole_cluster_restart_keeps_every_record_and_the_run_history(ha: ProcessCluster) -> None:
    _start(ha)
    client = ha.client()
    for process_id in ("quick", "failing", "job-1"):
        client.wait_run(client.launch_process("ha", process_id).run_id, 30)
    records = client.list_processes("ha")
    runs = client.list_runs("ha")
    for service in [*ha.workers.values(), *ha.controllers.values()]:
        ha.kill(service, signal.SIGTERM)
    _start(ha)
    # The new controller counts w1 alive from the store; a launch before the new w1 process has
    # registered went to the old one's address and, once the new one registered, ended lost
    # ("restarted while running it"), though it never reached it: known, recorded on issue 14.
    registered = "registered with the controller"
    assert_eventually(lambda: ha.workers["w1"].output().count(registered) >= 2, timeout_s=30)
    after = ha.client()
    assert after.list_processes("ha") == records
    assert after.list_runs("ha") == runs
    assert after.wait_run(after.launch_process("ha", "quick").run_id, 30).state is S.DONE
