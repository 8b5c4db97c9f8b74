"""Integration: the original's behaviours users rely on (issue 12), against a real controller and worker.

The worker's app lists, per scope, what ``LISTS`` says, so a test can take a
process out of the workers' list and define again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import FailedPrecondition, InvalidArgument, ProcessState, WatchEventType
from shards.models import ProcessRecord, WatchEvent
from shards_worker import ProcessContext, ProcessDefinition, WorkerApp
from tests.support.apps import GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually
from tests.test_watch import Recorder

S = ProcessState
T = WatchEventType


def partial(context: ProcessContext) -> None:
    context.report_progress("counted", 0.4)


def silent(context: ProcessContext) -> None:
    pass


def held(context: ProcessContext) -> None:
    """Waits for gate("held:" + scope) (or a stop), having said it is half way."""
    opened = gate(f"held:{context.scope_id}")
    while not opened.wait(0.01):
        if not context.should_continue():
            return
    context.report_progress("half", 0.5)


def failing(context: ProcessContext) -> None:
    context.report_progress("about to fail", 0.3)
    raise RuntimeError("the sheep escaped")


def waiting_start(context: ProcessContext) -> None:
    """Reports nothing until gate("start:" + scope) opens: its progress is the controller's own."""
    gate(f"start:{context.scope_id}").wait(20)


FULL = [
    ProcessDefinition("partial", partial, name="Partial", detail_level=1),
    ProcessDefinition("silent", silent, name="Silent", detail_level=1),
    ProcessDefinition("held", held, name="Held", detail_level=4),
    ProcessDefinition("failing", failing, name="Failing", detail_level=2),
    ProcessDefinition("waiting-start", waiting_start, name="Waiting start", detail_level=1),
    ProcessDefinition("debug-dump", silent, name="Debug dump", detail_level=1, special=True),
    ProcessDefinition("import-file:4711", silent, name="Import file 4711", detail_level=3),
    # ^(a+)+$ on this name takes a backtracking engine about 2^48 steps
    ProcessDefinition("backtrack", silent, name="a" * 48 + "!", detail_level=3),
]
LISTS: dict[str, list[ProcessDefinition]] = {}
ASKED: dict[str, int] = {}  # scope -> how many times the worker was asked for its list


def _listed(scope_id: str) -> list[ProcessDefinition]:
    ASKED[scope_id] = ASKED.get(scope_id, 0) + 1
    return LISTS.get(scope_id, FULL)


ORIGINAL_APP = WorkerApp(get_scope_data=lambda scope_id: scope_id, get_process_list=_listed)


@pytest.fixture
def orig(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(embedded_uri(tmp_path))
    try:
        running.start_controller()
        running.start_worker(ORIGINAL_APP)
        yield running
    finally:
        running.close()
        LISTS.clear()
        ASKED.clear()
        GATES.clear()


def _ids(records: object) -> set[str]:
    return {r.process_id for r in records}  # type: ignore[attr-defined]


# ---------------------------------------------------------------- 1. dismiss


def test_dismiss_returns_an_ended_process_to_idle_and_its_runs_keep_everything(orig: Cluster) -> None:
    client = orig.client
    failed = client.wait_run(client.launch_process("farm", "failing").run_id, 10)
    assert client.get_process("farm", "failing").failed_at is not None
    dismissed = client.dismiss_process_messages("farm", "failing")
    assert dismissed.state is S.IDLE
    assert (dismissed.error, dismissed.progress.message, dismissed.progress.rate) == ("", "", 0.0)
    assert (dismissed.failed_at, dismissed.done_at, dismissed.stopped_at, dismissed.duration) == (None,) * 4
    assert client.get_process("farm", "failing") == dismissed
    # the history keeps it all
    (run,) = client.list_runs("farm", "failing")
    assert run.run_id == failed.run_id and run.state is S.FAILED
    assert run.error == "RuntimeError: the sheep escaped" and run.progress.message == "about to fail"

    # stopped and done go back to idle too
    stopped = client.launch_process("farm", "held")
    assert_eventually(lambda: client.get_process("farm", "held").state is S.RUNNING)
    client.stop_process("farm", "held")
    assert client.wait_run(stopped.run_id, 10).state is S.STOPPED
    assert client.dismiss_process_messages("farm", "held").stopped_at is None
    assert client.get_process("farm", "held").state is S.IDLE
    client.wait_run(client.launch_process("farm", "silent").run_id, 10)
    done = client.dismiss_process_messages("farm", "silent")
    assert done.state is S.IDLE and done.done_at is None and done.progress.rate == 0.0

    # an active one is refused, and stays as it is
    client.launch_process("farm", "held")
    with pytest.raises(FailedPrecondition, match="once it has ended"):
        client.dismiss_process_messages("farm", "held")
    assert client.get_process("farm", "held").state.is_active
    gate("held:farm").set()


# ---------------------------------------------------------------- 2. a relaunch


def test_a_relaunch_clears_the_previous_runs_status(orig: Cluster) -> None:
    client = orig.client
    for ending in ("stop", "done"):
        first = client.launch_process("farm", "held")
        assert_eventually(lambda: client.get_process("farm", "held").state is S.RUNNING)
        if ending == "stop":
            client.stop_process("farm", "held")
        else:
            gate("held:farm").set()
        client.wait_run(first.run_id, 10)
        ended = client.get_process("farm", "held")
        assert ended.duration is not None and (ended.stopped_at or ended.done_at) is not None
        gate("held:farm").clear()
        again = client.launch_process("farm", "held")
        assert_eventually(lambda: client.get_process("farm", "held").state is S.RUNNING)
        running = client.get_process("farm", "held")
        assert running.run_id == again.run_id
        assert (running.done_at, running.stopped_at, running.failed_at, running.duration) == (None,) * 4
        assert running.error == ""
        client.stop_process("farm", "held")
        client.wait_run(again.run_id, 10)
    failed = client.wait_run(client.launch_process("farm", "failing").run_id, 10)
    assert failed.state is S.FAILED
    relaunched = client.launch_process("farm", "failing").process
    assert relaunched.failed_at is None and relaunched.error == "" and relaunched.duration is None


# ---------------------------------------------------------------- 3. progress


def test_progress_is_starting_at_start_and_complete_at_success(orig: Cluster) -> None:
    client = orig.client
    run = client.launch_process("farm", "waiting-start")
    assert_eventually(lambda: client.get_process("farm", "waiting-start").state is S.RUNNING)
    started = client.get_process("farm", "waiting-start").progress
    assert (started.message, started.rate) == ("Starting…", 0.0)
    gate("start:farm").set()
    client.wait_run(run.run_id, 10)
    # the code reported nothing: "All done"
    assert client.get_process("farm", "waiting-start").progress == client.get_run(run.run_id).progress
    assert (client.get_process("farm", "waiting-start").progress.message, 1.0) == ("All done", 1.0)
    assert client.get_process("farm", "waiting-start").progress.rate == 1.0
    # the code's last word stays, at 100 %
    client.wait_run(client.launch_process("farm", "partial").run_id, 10)
    partial_done = client.get_process("farm", "partial").progress
    assert (partial_done.message, partial_done.rate) == ("counted", 1.0)
    # a failure keeps what it reported last
    client.wait_run(client.launch_process("farm", "failing").run_id, 10)
    failed = client.get_process("farm", "failing").progress
    assert (failed.message, failed.rate) == ("about to fail", 0.3)


# ---------------------------------------------------------------- 4. define keeps the catalog true


def test_define_removes_what_the_workers_no_longer_list_and_says_so(orig: Cluster) -> None:
    client = orig.client
    first = client.define_processes("farm")
    assert set(first.added) == _ids(FULL) and not first.removed and not first.kept
    assert client.define_processes("farm").added == ()  # nothing new the second time
    LISTS["farm"] = [d for d in FULL if d.process_id not in ("silent", "debug-dump")]
    second = client.define_processes("farm")  # no clean: stale records go anyway
    assert second.removed == ("debug-dump", "silent") and second.added == () and second.kept == ()
    assert _ids(client.list_processes("farm")) == _ids(LISTS["farm"])
    assert second.wiped == 0


def test_an_active_record_no_longer_listed_stays_until_its_run_ends(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    run = client.launch_process("farm", "held")
    LISTS["farm"] = [d for d in FULL if d.process_id != "held"]
    result = client.define_processes("farm")
    assert result.kept == ("held",) and result.removed == ()
    assert client.get_process("farm", "held").state.is_active
    gate("held:farm").set()
    assert client.wait_run(run.run_id, 10).state is S.DONE
    assert_eventually(lambda: "held" not in _ids(client.list_processes("farm")))
    assert client.get_run(run.run_id).state is S.DONE  # its run is history, still there


def test_clean_wipes_every_inactive_record_statuses_included(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    client.wait_run(client.launch_process("farm", "failing").run_id, 10)
    running = client.launch_process("farm", "held")
    result = client.define_processes("farm", clean=True)
    assert result.wiped == len(FULL) - 1 and result.removed == () and result.kept == ()
    failing = client.get_process("farm", "failing")
    assert (failing.state, failing.error, failing.failed_at, failing.run_id) == (S.IDLE, "", None, "")
    assert client.get_process("farm", "held").run_id == running.run_id  # the active one is untouched
    gate("held:farm").set()


# ---------------------------------------------------------------- 5. the first view defines


def test_the_first_list_or_watch_of_a_scope_defines_it(orig: Cluster) -> None:
    client = orig.client
    assert _ids(client.list_processes("barn")) == _ids(FULL)  # no define needed
    stream = client.watch_processes("meadow")
    seen: list[WatchEvent] = []
    for event in stream:
        seen.append(event)
        if event.type is T.SYNCED:
            break
    stream.close()
    assert {e.process.process_id for e in seen if e.type is T.SNAPSHOT and e.process} == _ids(FULL)
    # a scope nobody defines any more (purged) is defined again on its next view, as the original does
    client.purge_processes("barn")
    assert _ids(client.list_processes("barn")) == _ids(FULL)


def test_concurrent_first_views_define_once(orig: Cluster) -> None:
    client = orig.client
    results: list[list[ProcessRecord]] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.list_processes("pasture"))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 8 and all(_ids(r) == _ids(FULL) for r in results)
    assert ASKED["pasture"] == 1  # one define for the eight first views
    client.list_processes("pasture")
    assert ASKED["pasture"] == 1  # defined: later views do not ask again


def test_a_scope_no_worker_serves_still_answers_empty(tmp_path: Path) -> None:
    lonely = Cluster(embedded_uri(tmp_path))
    try:
        lonely.start_controller()
        lonely.start_worker(WorkerApp.of(FULL, scopes=("farm-*",)))
        assert lonely.client.list_processes("elsewhere") == []
        stream = lonely.client.watch_processes("elsewhere")
        assert next(stream).type is T.SYNCED
        stream.close()
        assert len(lonely.client.list_processes("farm-1")) == len(FULL)
    finally:
        lonely.close()


# ---------------------------------------------------------------- 6. reset


def test_reset_wipes_and_defines_again_in_one_request(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    client.wait_run(client.launch_process("farm", "failing").run_id, 10)
    LISTS["farm"] = [d for d in FULL if d.process_id != "silent"]
    result = client.reset_processes("farm")
    assert result.wiped == len(FULL) and result.removed == ("silent",)
    assert result.added == ()  # every listed process had a record: wiped, not added
    assert {r.state for r in result.processes} == {S.IDLE} and not any(r.error for r in result.processes)
    assert _ids(client.list_processes("farm")) == _ids(LISTS["farm"])
    assert client.list_runs("farm", "failing")[0].state is S.FAILED  # the history stays


def test_reset_is_refused_naming_the_active_processes(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    client.launch_process("farm", "held")
    before = client.list_processes("farm")
    with pytest.raises(FailedPrecondition, match=r"active processes \(held\)"):
        client.reset_processes("farm")
    assert client.list_processes("farm") == before  # nothing changed
    gate("held:farm").set()


# ---------------------------------------------------------------- 7. search


def test_search_by_regular_expression_on_name_and_id(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    assert _ids(client.list_processes("farm", name_regex="^(partial|SILENT)$")) == {"partial", "silent"}
    assert _ids(client.list_processes("farm", name_regex=r"file:\d+")) == {"import-file:4711"}  # the id
    assert _ids(client.list_processes("farm", name_regex="^import file")) == {"import-file:4711"}  # the name
    assert _ids(client.list_processes("farm", name_contains="ART")) == {"partial", "waiting-start"}
    with pytest.raises(InvalidArgument, match="missing \\)"):
        client.list_processes("farm", name_regex="(unclosed")
    with pytest.raises(InvalidArgument, match="at most 256"):
        client.list_processes("farm", name_regex="a" * 257)
    with pytest.raises(InvalidArgument, match="not a valid regular expression"):
        next(iter(client.watch_processes("farm", name_regex="(?=lookahead)")))


def test_a_pattern_built_to_backtrack_answers_at_once(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    started = time.perf_counter()
    assert client.list_processes("farm", name_regex="^(a+)+$|(x+x+)+y") == []
    assert time.perf_counter() - started < 0.1


# ---------------------------------------------------------------- 8. the original's filters


def test_hide_special_and_active_only_and_an_active_process_always_shows(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    assert "debug-dump" not in _ids(client.list_processes("farm", hide_special=True))
    assert client.list_processes("farm", active_only=True) == []
    assert "held" not in _ids(client.list_processes("farm", max_detail_level=2))
    run = client.launch_process("farm", "held")  # detail level 4
    assert _ids(client.list_processes("farm", active_only=True)) == {"held"}
    assert "held" in _ids(client.list_processes("farm", max_detail_level=2))  # active: always shown
    gate("held:farm").set()
    client.wait_run(run.run_id, 10)
    assert client.list_processes("farm", active_only=True) == []


def test_a_watch_with_active_only_is_told_when_a_record_leaves_the_filter(orig: Cluster) -> None:
    client = orig.client
    client.define_processes("farm")
    recorder = Recorder(client.watch_processes("farm", active_only=True))
    events = recorder.events
    assert_eventually(lambda: [e.type for e in events] == [T.SYNCED])
    run = client.launch_process("farm", "held")
    assert_eventually(lambda: any(e.type is T.CHANGED and _pid(e) == "held" for e in events))
    gate("held:farm").set()
    client.wait_run(run.run_id, 10)
    assert_eventually(lambda: events[-1].type is T.REMOVED and _pid(events[-1]) == "held")
    assert {_pid(e) for e in events if e.process} == {"held"}
    recorder.close()


def _pid(event: WatchEvent) -> str:
    return event.process.process_id if event.process else ""
