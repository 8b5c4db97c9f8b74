"""Integration: schedules (issue 15, part 4): cron fires, overlap, pause, misses, bad input."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from shards import FailedPrecondition, ProcessState
from shards.models import ProcessRecord
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.config import ControllerConfig
from shards_controller.state import State
from shards_controller.store import EmbeddedStore
from shards_controller.watch import WatchHub
from shards_worker import ProcessDefinition
from tests.support.cluster import Cluster, embedded_uri
from tests.support.isolated_apps import SCHEDULE_APP, quick
from tests.support.processes import CLI, cli_env
from tests.support.waiting import assert_eventually

S = ProcessState


@pytest.fixture
def cron(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(embedded_uri(tmp_path))
    try:
        running.start_controller()
        running.start_worker(SCHEDULE_APP)
        yield running
    finally:
        running.close()


def _restart(cluster: Cluster, **overrides: Any) -> None:
    if cluster._client is not None:
        cluster._client.close()
        cluster._client = None
    port = cluster.address.rsplit(":", 1)[1]
    cluster.stop_controller()
    cluster.start_controller(listen=f"127.0.0.1:{port}", **overrides)


def _fire_keys(cluster: Cluster, process_id: str) -> list[str]:
    return [r.idempotency_key for r in cluster.client.list_runs("cron", process_id, limit=500)]


def test_a_schedule_launches_once_per_fire_time(cron: Cluster) -> None:
    client = cron.client
    client.define_processes("cron")
    assert_eventually(
        lambda: client.get_process("cron", "sched-every-second").schedule_fires >= 3, timeout_s=15
    )
    keys = _fire_keys(cron, "sched-every-second")
    assert len(keys) == len(set(keys)) >= 3
    assert all(key.startswith("schedule:cron/sched-every-second@") for key in keys)
    [info] = [s for s in client.list_schedules("cron") if s.process_id == "sched-every-second"]
    assert info.schedule == "* * * * * *" and info.timezone == "UTC" and not info.paused
    assert info.next_fire_at is not None and info.last_outcome.startswith("launched run ")


def test_a_fire_that_finds_the_process_running_is_skipped_and_recorded(cron: Cluster) -> None:
    client = cron.client
    client.define_processes("cron")

    def skipped() -> bool:
        record = client.get_process("cron", "sched-overlap")
        return record.schedule_skips >= 2 and record.schedule_fires >= 1

    assert_eventually(skipped, timeout_s=15)
    [info] = [s for s in client.list_schedules("cron") if s.process_id == "sched-overlap"]
    assert info.timezone == "Europe/Paris"
    # A fire and its run are one write: every fire counted launched exactly one run. The
    # schedule fires on between the reads, so the count read before and after bracket the runs.
    before = client.get_process("cron", "sched-overlap")
    runs = client.list_runs("cron", "sched-overlap", limit=100)
    after = client.get_process("cron", "sched-overlap")
    assert 1 <= before.schedule_fires <= len(runs) <= after.schedule_fires
    assert len({r.idempotency_key for r in runs}) == len(runs)  # one run per fire time
    # Never two at once: each run started after the one before it ended.
    ordered = sorted(runs, key=lambda r: r.run_id)  # run ids sort by creation
    for earlier, later in itertools.pairwise(ordered):
        if later.started_at is not None:
            assert earlier.ended_at is not None and later.started_at >= earlier.ended_at, (earlier, later)
    assert sum(1 for r in runs if r.state.is_active) <= 1
    last = after.schedule_last_outcome
    assert last.startswith(("skipped the fire at ", "launched run ")), last


def test_pause_and_resume_are_stored_and_honoured(cron: Cluster) -> None:
    client = cron.client
    client.define_processes("cron")
    assert_eventually(
        lambda: client.get_process("cron", "sched-every-second").schedule_fires >= 1, timeout_s=15
    )
    paused = client.pause_schedule("cron", "sched-every-second")
    assert paused.paused and paused.next_fire_at is None
    # A fire may have been in flight as we paused: count from a moment after.
    time.sleep(0.3)
    fires = client.get_process("cron", "sched-every-second").schedule_fires
    _restart(cron)  # the pause is stored
    client = cron.client
    assert_eventually(lambda: client.list_schedules("cron") != [], timeout_s=10)
    assert [s.paused for s in client.list_schedules("cron") if s.process_id == "sched-every-second"] == [True]
    time.sleep(2.0)  # two fire times pass, paused
    assert client.get_process("cron", "sched-every-second").schedule_fires == fires
    resumed = client.resume_schedule("cron", "sched-every-second")
    assert not resumed.paused and resumed.next_fire_at is not None
    assert_eventually(
        lambda: client.get_process("cron", "sched-every-second").schedule_fires > fires, timeout_s=10
    )
    keys = _fire_keys(cron, "sched-every-second")
    assert len(keys) == len(set(keys))
    with pytest.raises(FailedPrecondition, match="has no schedule"):
        client.pause_schedule("cron", "sched-none")


def test_fires_missed_while_no_controller_led_are_recorded_past_the_window(cron: Cluster) -> None:
    client = cron.client
    client.define_processes("cron")
    client.pause_schedule("cron", "sched-overlap")  # only the quick one here
    assert_eventually(
        lambda: client.get_process("cron", "sched-every-second").schedule_fires >= 1, timeout_s=15
    )
    port = cron.address.rsplit(":", 1)[1]
    cron._client = None
    client.close()
    cron.stop_controller()
    time.sleep(3.0)  # three fire times with no leader
    cron.start_controller(listen=f"127.0.0.1:{port}", schedule_catch_up_s=0.5)
    after = cron.client

    def recorded() -> bool:
        return after.get_process("cron", "sched-every-second").schedule_missed >= 2

    assert_eventually(recorded, timeout_s=10)
    keys = _fire_keys(cron, "sched-every-second")
    assert len(keys) == len(set(keys))


def test_a_bad_schedule_is_refused_and_nothing_is_stored(cron: Cluster) -> None:
    with pytest.raises(ValueError, match="is not a cron expression"):
        ProcessDefinition("p", quick, schedule="every tuesday")
    with pytest.raises(ValueError, match="is not a known time zone"):
        ProcessDefinition("p", quick, schedule="* * * * *", schedule_timezone="Mars/Olympus")
    request = pb.LaunchProcessRequest(
        scope_id="cron",
        process_id="adhoc-cron",
        definition=pb.ProcessDefinition(process_id="adhoc-cron", schedule="61 * * * *"),
    )
    with grpc.insecure_channel(cron.address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ProcessControllerStub(channel).LaunchProcess(request, timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "definition.schedule '61 * * * *' is not a cron expression" in (refused.value.details() or "")
    assert cron.client.list_runs("cron", "adhoc-cron") == []


def test_shards_schedules_pause_and_resume_on_the_command_line(cron: Cluster) -> None:
    cron.client.define_processes("cron")

    def shards(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, "--controller", cron.address],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    paused = shards("pause", "cron", "sched-overlap")
    assert paused.returncode == 0 and "sched-overlap: schedule '* * * * * *' paused" in paused.stdout
    listed = shards("schedules", "cron")
    assert listed.returncode == 0, listed.stderr
    assert (
        "sched-every-second" in listed.stdout
        and "Europe/Paris" in listed.stdout
        and "paused" in listed.stdout
    )
    resumed = shards("resume", "cron", "sched-overlap")
    assert resumed.returncode == 0 and "resumed, next fire at" in resumed.stdout
    refused = shards("pause", "cron", "sched-none")
    assert refused.returncode == 1 and "has no schedule" in refused.stderr


def test_the_tick_looks_only_at_the_records_that_have_a_schedule(tmp_path: Path) -> None:
    """The leader's index of scheduled records follows every way a working record changes."""
    state = State(ControllerConfig(), EmbeddedStore(tmp_path / "unused.db"), WatchHub(10, 10))
    plain = [ProcessRecord("s", f"p{n}") for n in range(1000)]
    for record in plain:
        state.stage(record)
    timed = state.stage(ProcessRecord("s", "nightly", schedule="0 3 * * *")).record
    assert state.scheduled == {("s", "nightly")}  # not the 1,000 others
    assert timed is not None
    state.stage(replace(timed, schedule=""))  # defined again without its schedule
    assert state.scheduled == set()
    again = state.stage(ProcessRecord("s", "nightly", schedule="0 3 * * *"))
    state.commit_failed([again], RuntimeError("store down"))  # nothing committed: the stage is undone
    assert state.scheduled == set() and state.record("s", "nightly") is None
    state.stage(ProcessRecord("s", "hourly", schedule="0 * * * *"))
    state.stage_removal("s", "hourly")
    assert state.scheduled == set()
    state.stage(ProcessRecord("s", "hourly", schedule="0 * * * *"))
    state.reset()  # stepped down
    assert state.scheduled == set()
