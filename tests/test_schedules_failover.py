"""Failover with real processes on MongoDB (FerretDB): a schedule fires once per fire time across kill -9.

Every second for 20+ fire times, with the leader killed (SIGKILL) part way:
each fire time is accounted for exactly once, as a run, a skip (caught up by
the run of a later fire time, or the process still active) or a miss, and no
fire time has two runs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from shards import ProcessRecord, ProcessState
from tests.support.mongo import MongoTarget
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

pytestmark = [pytest.mark.mongo, pytest.mark.e2e]
S = ProcessState
FIRE_TIMES = 20


@pytest.fixture
def ha(tmp_path: Path, fresh_mongo: MongoTarget) -> Iterator[ProcessCluster]:
    store = f"{fresh_mongo.uri.rstrip('/')}/{fresh_mongo.database}"
    cluster = ProcessCluster(tmp_path, store, "tests.support.isolated_apps:SCHEDULE_APP")
    try:
        yield cluster
    finally:
        cluster.close()


def test_a_schedule_fires_once_per_fire_time_across_a_leader_kill(ha: ProcessCluster) -> None:
    ha.start_controller("a")
    assert_eventually(lambda: ha.leader() == "a", timeout_s=15)
    ha.start_controller("b")
    ha.start_worker("w1")
    client = ha.client()
    assert_eventually(lambda: any(w.alive for w in client.list_workers()), timeout_s=15)
    client.define_processes("cron")
    client.pause_schedule("cron", "sched-overlap")  # the every-second one alone

    def record() -> ProcessRecord:
        return client.get_process("cron", "sched-every-second")

    def handled() -> int:
        r = record()
        return int(r.schedule_fires + r.schedule_skips + r.schedule_missed)

    assert_eventually(lambda: handled() >= 5, timeout_s=20)
    ha.kill(ha.controllers["a"], signal.SIGKILL)
    assert_eventually(lambda: ha.leader() == "b", timeout_s=20)
    assert_eventually(lambda: handled() >= FIRE_TIMES + 2, timeout_s=40)
    client.pause_schedule("cron", "sched-every-second")
    final = record()
    runs = client.list_runs("cron", "sched-every-second", limit=500)
    fires = [datetime.fromisoformat(r.idempotency_key.rsplit("@", 1)[1]) for r in runs]
    assert len(fires) == len(set(fires)), "a fire time ran twice"
    assert final.schedule_fires == len(runs)
    # Every fire time from the first to the last handled is counted once: run, skip or miss.
    first, last = min(fires), final.schedule_last_fire_at
    assert last is not None
    span = round((last - first).total_seconds()) + 1
    counted = final.schedule_fires + final.schedule_skips + final.schedule_missed
    assert counted == span >= FIRE_TIMES, (counted, span, final)
    assert all(r.state in (S.DONE, S.SCHEDULED, S.RUNNING) or r.state.is_end for r in runs)
