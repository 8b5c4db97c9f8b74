"""Integration: isolation="process" (issue 15, part 1): the hard stop, crashes, the context API.

Real worker, real controller, real OS processes forked from the fork server.
The graces are small (tests/support/isolated_apps.py: 0.3 s each). The margin
on a forced stop's time is MARGIN_S: the signal's delivery, the pipe's EOF, the
end's report and the test's own polling, on a loaded 2-core machine.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shards import Client, ProcessState
from shards.cli_render import make_console, process_table, record_detail
from shards.models import ProcessRecord, WatchEvent
from shards.overdue import OVERDUE_ERROR
from shards_worker import ProcessDefinition
from tests.support.cluster import Cluster, embedded_uri
from tests.support.isolated_apps import KILL_GRACE_S, RUN_CONTROL_APP, STOP_GRACE_S, ignores_stop
from tests.support.waiting import assert_eventually

S = ProcessState
MARGIN_S = 1.0


def _running(client: Client, run_id: str) -> None:
    assert_eventually(lambda: client.get_run(run_id).progress.rate > 0)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie until reaped: gone for our purposes.
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


def test_an_isolated_process_that_ignores_stop_and_sigterm_is_killed_within_the_graces(rc: Cluster) -> None:
    client = rc.client
    run_id = client.launch_process("farm", "iso-ignores-sigterm").run_id
    _running(client, run_id)
    asked = time.monotonic()
    client.stop_process("farm", "iso-ignores-sigterm")
    run = client.wait_run(run_id, 10)
    took = time.monotonic() - asked
    assert run.state is S.STOPPED
    assert run.error.startswith("killed (SIGKILL) after "), run.error
    assert "it ignored the stop for 0.3 s and SIGTERM for 0.3 s" in run.error
    assert STOP_GRACE_S + KILL_GRACE_S <= took < STOP_GRACE_S + KILL_GRACE_S + MARGIN_S, took
    assert client.get_process("farm", "iso-ignores-sigterm").state is S.STOPPED


def test_an_isolated_process_that_ignores_the_stop_is_terminated_after_its_grace(rc: Cluster) -> None:
    client = rc.client
    run_id = client.launch_process("farm", "iso-ignores-stop").run_id
    _running(client, run_id)
    asked = time.monotonic()
    client.stop_process("farm", "iso-ignores-stop")
    run = client.wait_run(run_id, 10)
    took = time.monotonic() - asked
    assert run.state is S.STOPPED
    assert run.error.startswith("terminated (SIGTERM) after "), run.error
    assert STOP_GRACE_S <= took < STOP_GRACE_S + MARGIN_S, took


def test_a_stop_may_give_its_own_grace(rc: Cluster) -> None:
    client = rc.client
    run_id = client.launch_process("farm", "iso-ignores-stop").run_id
    _running(client, run_id)
    asked = time.monotonic()
    client.stop_process("farm", "iso-ignores-stop", stop_grace_s=0)
    run = client.wait_run(run_id, 10)
    assert run.state is S.STOPPED and "it ignored the stop for 0 s" in run.error, run.error
    assert time.monotonic() - asked < MARGIN_S


def test_a_negative_stop_grace_is_refused(rc: Cluster) -> None:
    from shards import InvalidArgument

    client = rc.client
    run_id = client.launch_process("farm", "iso-check-stop").run_id
    with pytest.raises(InvalidArgument, match="stop_grace must not be negative"):
        client.stop_process("farm", "iso-check-stop", stop_grace_s=-1)
    assert client.get_run(run_id).state is S.RUNNING  # the refused stop changed nothing
    client.stop_process("farm", "iso-check-stop")
    assert client.wait_run(run_id, 10).state is S.STOPPED


def test_code_in_a_thread_that_ignores_the_stop_shows_overdue_then_ends_when_it_returns(rc: Cluster) -> None:
    client = rc.client
    run_id = client.launch_process("farm", "thread-ignores-stop").run_id
    _running(client, run_id)
    client.stop_process("farm", "thread-ignores-stop")

    def overdue() -> ProcessRecord | None:
        record = client.get_process("farm", "thread-ignores-stop")
        return record if record.stop_overdue_since is not None else None

    record = assert_eventually(overdue)
    assert record is not None
    assert record.state in (S.STOP_REQUESTED, S.STOPPING)
    # The record's error says what to do, for every client (grpcurl, the GUI, the CLI).
    assert record.error == OVERDUE_ERROR and "isolation='process'" in record.error
    assert client.get_run(run_id).error == OVERDUE_ERROR
    table, detail = _rendered(process_table([record])), _rendered(record_detail(record))
    # shards ps: the row's error cell (folded) says it; no caption repeats it.
    assert "stop overdue: the code" in table and OVERDUE_ERROR not in table, table
    assert OVERDUE_ERROR in detail and "stop overdue since" in detail, detail  # shards get
    run = client.wait_run(run_id, 10)  # the code returns 1.5 s after it started
    assert run.state is S.STOPPED and run.error == ""
    assert run.stop_overdue_since is not None  # the run keeps the fact
    assert any("isolation='process'" in line for line in run.log_tail), run.log_tail
    assert client.get_process("farm", "thread-ignores-stop").stop_overdue_since is None  # it has ended


@pytest.mark.parametrize(
    ("process_id", "error"),
    [
        ("iso-segfault", "its OS process died of SIGSEGV (signal 11)"),
        ("iso-exit-3", "its OS process exited with code 3 before the code returned"),
    ],
)
def test_a_crash_of_isolated_code_fails_the_run_and_spares_the_worker(
    rc: Cluster, process_id: str, error: str
) -> None:
    client = rc.client
    neighbour = client.launch_process("farm", "iso-check-stop").run_id  # another run, on the same worker
    _running(client, neighbour)
    run = client.wait_run(client.launch_process("farm", process_id).run_id, 10)
    assert run.state is S.FAILED and run.error == error, run
    assert client.get_process("farm", process_id).progress.message.startswith("about to")
    # The worker and its other runs go on.
    assert client.get_run(neighbour).state is S.RUNNING
    assert client.wait_run(client.launch_process("farm", "thread-quick").run_id, 10).state is S.DONE
    assert client.wait_run(client.launch_process("farm", "iso-quick").run_id, 10).state is S.DONE
    client.stop_process("farm", "iso-check-stop")
    assert client.wait_run(neighbour, 10).state is S.STOPPED  # check_stop works in isolation


def test_an_exception_in_isolated_code_fails_the_run_with_its_traceback(rc: Cluster) -> None:
    run = rc.client.wait_run(rc.client.launch_process("farm", "iso-raises").run_id, 10)
    assert run.state is S.FAILED and run.error == "ValueError: bad sheep"
    assert run.log_tail[0] == "about to raise"
    assert "Traceback" in run.log_tail[-1] and "raise ValueError" in run.log_tail[-1]


def test_progress_children_and_logs_of_isolated_code_reach_a_watcher(rc: Cluster) -> None:
    events: list[WatchEvent] = []
    watcher = rc.make_client()

    def watch() -> None:
        for event in watcher.watch_processes("farm"):
            events.append(event)

    threading.Thread(target=watch, daemon=True).start()
    client = rc.client
    run_id = client.launch_process("farm", "iso-cooperative").run_id

    def seen(process_id: str, message: str) -> bool:
        return any(
            e.process is not None
            and e.process.process_id == process_id
            and e.process.progress.message == message
            for e in list(events)
        )

    assert_eventually(lambda: seen("iso-child", "child ran"))
    assert_eventually(lambda: seen("iso-cooperative", "child ended done; waiting for the stop"))
    child = client.get_process("farm", "iso-child")
    assert child.state is S.DONE and child.parent_run_id == run_id
    client.stop_process("farm", "iso-cooperative")
    run = client.wait_run(run_id, 10)
    assert run.state is S.STOPPED and run.error == ""  # it honoured the stop: no force
    pid_line = run.log_tail[0]
    assert pid_line.startswith("isolated in pid ") and int(pid_line.split()[-1]) != os.getpid()
    assert run.log_tail[1:] == ("scope data {'farm': 'farm'}", "stopped as asked")


def test_async_code_runs_isolated_with_children(rc: Cluster) -> None:
    client = rc.client
    run = client.wait_run(client.launch_process("farm", "iso-async").run_id, 10)
    assert run.state is S.DONE
    assert client.get_process("farm", "iso-async").progress.message == "async child ended done"


def test_a_worker_shutdown_forces_an_isolated_run_that_ignores_it(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        worker = cluster.start_worker(RUN_CONTROL_APP)
        client = cluster.client
        client.define_processes("farm")
        run_id = client.launch_process("farm", "iso-ignores-sigterm").run_id
        _running(client, run_id)
        [active] = [r for r in worker.runner._runs.values() if r.isolated is not None]
        assert active.isolated is not None
        pid = active.isolated.pid
        assert pid is not None
        began = time.monotonic()
        cluster.stop_worker(worker, grace_s=0.2)
        assert time.monotonic() - began < 0.2 + KILL_GRACE_S + MARGIN_S
        run = client.get_run(run_id)
        assert run.state is S.FAILED, run
        assert "killed (SIGKILL)" in run.error and "ignored the worker's shutdown for 0.2 s" in run.error
        assert_eventually(lambda: _pid_gone(pid))
    finally:
        cluster.close()


def test_isolated_code_must_pickle_and_the_settings_must_make_sense() -> None:
    with pytest.raises(ValueError, match="isolation must be 'thread' or 'process'"):
        ProcessDefinition("p", ignores_stop, isolation="container")
    with pytest.raises(ValueError, match="module-level function"):
        ProcessDefinition("p", lambda context: None, isolation="process")
    with pytest.raises(ValueError, match="stop_grace_s must be a number of seconds >= 0"):
        ProcessDefinition("p", ignores_stop, stop_grace_s=-1)
    with pytest.raises(ValueError, match="kill_grace_s must be a number of seconds >= 0"):
        ProcessDefinition("p", ignores_stop, kill_grace_s=float("nan"))
    assert ProcessDefinition("p", ignores_stop, isolation="process").isolation == "process"


def _rendered(renderable: Any) -> str:
    out = io.StringIO()
    console = make_console(out)
    console.width = 400  # no line wraps (the error column folds at its own width)
    console.print(renderable)
    return out.getvalue()


def test_the_cli_table_shows_an_overdue_stop_and_the_advice() -> None:
    from datetime import UTC, datetime

    from shards.cli_render import state_change_line

    record = ProcessRecord(
        "farm", "slow", state=S.STOPPING, stop_overdue_since=datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)
    )
    out = io.StringIO()
    console = make_console(out)
    console.width = 200
    console.print(process_table([record]))
    console.print(state_change_line(record))
    text = out.getvalue()
    assert "stop overdue since" in text
    assert "isolation='process'" in text
