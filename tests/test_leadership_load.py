"""Load: a lone controller on the embedded store keeps leading under full load (issue 10, item 7).

A 10,000-process scope, a watch of it, 2,000 launches over a minute, and now and
then a turn of the controller's event loop that takes 2.5 lease lifetimes (what
a big snapshot or a burst of work did). Before, the late renewal found its own
lease run out, took a new term against itself, fenced off its own writes
(StaleTerm 'term 8 is stale: term 9 leads'), stepped down and took over again;
and the sweep, late too, took the workers whose heartbeats were still queued
for silent and lost their runs. Once, a heartbeat made just before a run reached
its worker, read after a stall, lost that run (tests/test_late_heartbeats.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shards import ProcessState
from shards_worker import ProcessDefinition, WorkerApp
from tests.support.apps import quick
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually

S = ProcessState
SCOPE_SIZE = 10_000
LAUNCHES = 2_000
HOLD_S = 62.0  # over a minute of load
STALL_EVERY_S = 12.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_lone_controller_keeps_its_lease_and_term_for_a_minute_at_full_load(tmp_path: Path) -> None:
    app = WorkerApp.of([ProcessDefinition(f"p-{n}", quick, name=f"Process {n}") for n in range(SCOPE_SIZE)])
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        server = cluster.start_controller()
        controller = server.controller
        ttl_s = cluster.config_overrides["lease_ttl_s"]
        cluster.start_worker(app, capacity=8, worker_id="w1")
        client = cluster.client
        assert len(client.define_processes("big").processes) == SCOPE_SIZE
        term = controller.term

        watched: list[object] = []
        watch = client.watch_processes("big")
        watcher = threading.Thread(target=lambda: watched.extend(watch), daemon=True)
        watcher.start()

        changes: list[str] = []  # every moment the controller was not leading in its first term
        started = time.monotonic()
        stop = threading.Event()

        def monitor() -> None:
            while not stop.wait(0.05):
                if not controller.is_leader or controller.term != term:
                    changes.append(
                        f"{time.monotonic() - started:.1f}s: leading={controller.is_leader} "
                        f"term={controller.term}"
                    )

        monitoring = threading.Thread(target=monitor, daemon=True)
        monitoring.start()
        run_ids: list[str] = []
        stalls = 0
        next_stall = started + STALL_EVERY_S / 2
        while time.monotonic() - started < HOLD_S:
            due = min(LAUNCHES, int(LAUNCHES * (time.monotonic() - started) / (HOLD_S - 5)) + 1)
            while len(run_ids) < due:
                run_ids.append(client.launch_process("big", f"p-{len(run_ids)}").run_id)
            if time.monotonic() >= next_stall:
                # A turn of the loop that outlasts the lease 2.5 times over.
                cluster.loop.call_soon_threadsafe(time.sleep, 2.5 * ttl_s)
                stalls += 1
                next_stall += STALL_EVERY_S
            time.sleep(0.05)
        stop.set()
        monitoring.join(5)
        assert len(run_ids) == LAUNCHES and stalls >= 4
        assert changes == []
        assert controller.term == term and controller.is_leader

        def all_ended() -> bool:
            states = {client.get_run(run_id).state for run_id in run_ids[-50:]}
            return states == {S.DONE}

        assert_eventually(all_ended, timeout_s=60, interval_s=0.5)
        states = [client.get_run(run_id).state for run_id in run_ids]
        assert set(states) == {S.DONE}, {s: states.count(s) for s in set(states)}
        assert [w.alive for w in client.list_workers()] == [True]
        assert watched  # the watch saw the load go by
    finally:
        cluster.close()
