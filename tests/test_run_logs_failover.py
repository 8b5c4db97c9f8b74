"""Whole run logs across a failover: two controllers on FerretDB, a worker, kill -9 of the leader mid-run.

Every line of a run logging through the kill is stored once and in order, a
follower that was reading through it resumes on the new leader without a gap
or a repeat, and a log stored before the kill is read whole from the new leader.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import Client, ProcessState
from tests.support.log_apps import TIMED_LINES, line
from tests.support.mongo import MongoTarget
from tests.support.processes import ProcessCluster
from tests.support.waiting import assert_eventually

pytestmark = [pytest.mark.mongo, pytest.mark.e2e]
S = ProcessState


@pytest.fixture
def ha(tmp_path: Path, fresh_mongo: MongoTarget) -> Iterator[ProcessCluster]:
    store = f"{fresh_mongo.uri.rstrip('/')}/{fresh_mongo.database}"
    cluster = ProcessCluster(tmp_path, store, "tests.support.log_apps:LOG_APP")
    try:
        cluster.start_controller("a")
        assert_eventually(lambda: cluster.leader() == "a", timeout_s=15)
        cluster.start_controller("b")
        cluster.start_worker("w1")
        client = cluster.client()
        assert_eventually(lambda: any(w.worker_id == "w1" and w.alive for w in client.list_workers()), 15)
        yield cluster
    finally:
        cluster.close()


def read_all(client: Client, run_id: str) -> list[str]:
    lines: list[str] = []
    offset = 0
    while True:
        page = client.get_run_log(run_id, offset)
        lines.extend(page.lines)
        offset = page.next_offset
        if page.ended or not page.lines:
            return lines


def test_a_log_survives_a_failover_whole_and_a_follower_resumes_without_a_gap(ha: ProcessCluster) -> None:
    client = ha.client(retry_deadline_s=60)
    burst = client.launch_process("farm", "burst-10000").run_id
    assert client.wait_run(burst, 30).state is S.DONE
    run_id = client.launch_process("farm", "timed").run_id
    followed: list[str] = []
    offsets: list[int] = []
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            with ha.client(retry_deadline_s=60) as follower:
                for page in follower.follow_run_log(run_id):
                    offsets.append(page.offset)
                    followed.extend(page.lines)
        except BaseException as error:
            failures.append(error)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert_eventually(lambda: client.get_run_log(run_id).end_offset >= 50, 15)
    ha.kill(ha.controllers["a"])  # kill -9 while the run logs and the follower reads
    assert_eventually(lambda: ha.leader() == "b", timeout_s=15)
    assert client.wait_run(run_id, 60).state is S.DONE
    reader.join(60)
    assert not reader.is_alive() and not failures, failures
    expected = [line(n) for n in range(TIMED_LINES)] + ["done"]
    assert read_all(client, run_id) == expected  # each line once, in order, none lost
    assert followed == expected
    assert offsets == sorted(offsets)
    assert read_all(client, burst) == [line(n) for n in range(10_000)]  # stored before the kill
