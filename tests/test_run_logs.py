"""Whole run logs (issue 16): every line stored, read back by offset, followed live, capped, kept across
a controller restart; bad requests refused with a clear status and nothing changed.

Real controller and worker in-process (gRPC over loopback), real process code (tests.support.log_apps).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import Client, InvalidArgument, NotFound, ProcessState
from shards.run_logs import RunLogPage
from tests.support.apps import GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.log_apps import LOG_APP, PRINTED, line
from tests.support.waiting import assert_eventually

S = ProcessState


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(embedded_uri(tmp_path), log_max_lines=1000)
    try:
        cluster.start_controller()
        cluster.start_worker(LOG_APP)
        cluster.client.define_processes("farm")
        yield cluster
    finally:
        cluster.close()
        GATES.clear()


def read_all(client: Client, run_id: str, offset: int = 0, limit: int = 0) -> tuple[list[str], RunLogPage]:
    """Every line from ``offset``, page by page; and the last page."""
    lines: list[str] = []
    while True:
        page = client.get_run_log(run_id, offset, limit)
        assert page.offset == offset or page.offset == page.dropped, (page.offset, offset)
        lines.extend(page.lines)
        offset = page.next_offset
        if page.ended or not page.lines:
            return lines, page


def _restart_controller(cluster: Cluster) -> None:
    if cluster._client is not None:
        cluster._client.close()
        cluster._client = None
    port = cluster.address.rsplit(":", 1)[1]
    cluster.stop_controller()
    cluster.start_controller(listen=f"127.0.0.1:{port}")  # where the worker looks for it


def test_ten_thousand_lines_are_all_read_back_in_order(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        cluster.start_worker(LOG_APP)
        client = cluster.client
        run_id = client.launch_process("farm", "burst-10000").run_id
        run = client.wait_run(run_id, 30)
        assert run.state is S.DONE
        lines, last = read_all(client, run_id, limit=700)
        assert lines == [line(n) for n in range(10_000)]
        assert (last.end_offset, last.dropped, last.ended) == (10_000, 0, True)
        assert list(run.log_tail) == [line(n) for n in range(9_950, 10_000)]  # the tail goes on as before
        assert (run.log_lines, run.log_dropped) == (10_000, 0)  # the run says what its log holds
        # Any page from any offset.
        page = client.get_run_log(run_id, 4_321, 3)
        assert (page.lines, page.offset, page.next_offset) == (
            tuple(line(n) for n in (4321, 4322, 4323)),
            4321,
            4324,
        )
        # ... and the log is in the store: a restarted controller reads it whole.
        _restart_controller(cluster)
        assert read_all(cluster.client, run_id)[0] == [line(n) for n in range(10_000)]
    finally:
        cluster.close()


def test_past_the_cap_the_oldest_lines_go_and_are_counted(logs: Cluster) -> None:
    client = logs.client
    run_id = client.launch_process("farm", "burst-3000").run_id
    assert client.wait_run(run_id, 30).state is S.DONE
    # The cap is 1,000 lines: whole chunks of 256 go from the oldest until at most 1,000 are left.
    lines, last = read_all(client, run_id)
    assert last.dropped == 2048 and last.end_offset == 3000
    run = client.get_run(run_id)
    assert (run.log_lines, run.log_dropped) == (3000, 2048)  # the run says how many were dropped
    assert lines == [line(n) for n in range(2048, 3000)]
    # An offset among the dropped lines reads from the oldest kept one.
    page = client.get_run_log(run_id, 5, 2)
    assert (page.offset, page.lines, page.dropped) == (2048, (line(2048), line(2049)), 2048)


def test_a_follower_sees_lines_live_and_ends_when_the_run_ends(logs: Cluster) -> None:
    client = logs.client
    run_id = client.launch_process("farm", "ticking").run_id
    seen: list[str] = []
    ended = threading.Event()

    def follow() -> None:
        for page in client.follow_run_log(run_id):
            assert page.offset == len(seen)
            seen.extend(page.lines)
        ended.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert_eventually(lambda: len(seen) >= 20, 10)
    assert client.get_run(run_id).state is S.RUNNING  # live: the run goes on
    assert not ended.is_set()
    gate("farm").set()
    assert client.wait_run(run_id, 10).state is S.DONE
    assert ended.wait(10), "the follower did not end with the run"
    follower.join(5)
    assert seen[-1] == "done"
    assert seen[:-1] == [line(n) for n in range(len(seen) - 1)]
    assert seen == read_all(client, run_id)[0]


def test_a_follower_resuming_from_an_offset_misses_nothing(logs: Cluster) -> None:
    client = logs.client
    run_id = client.launch_process("farm", "ticking").run_id
    first: list[str] = []
    stream = client.follow_run_log(run_id)
    for page in stream:
        first.extend(page.lines)
        if len(first) >= 10:
            break
    stream.close()
    resume_at = len(first)
    assert_eventually(lambda: client.get_run_log(run_id).end_offset > resume_at + 10, 10)
    gate("farm").set()
    rest = [text for page in client.follow_run_log(run_id, resume_at) for text in page.lines]
    assert first + rest == read_all(client, run_id)[0]
    assert (first + rest)[:-1] == [line(n) for n in range(len(first) + len(rest) - 1)]


def test_a_log_survives_a_controller_restart_mid_run(logs: Cluster) -> None:
    client = logs.client
    run_id = client.launch_process("farm", "ticking").run_id
    assert_eventually(lambda: client.get_run_log(run_id).end_offset >= 30, 10)
    _restart_controller(logs)
    client = logs.client
    assert_eventually(lambda: client.get_run_log(run_id).end_offset >= 60, 15)
    gate("farm").set()
    assert client.wait_run(run_id, 15).state is S.DONE
    lines, last = read_all(client, run_id)
    assert lines[-1] == "done" and last.ended
    assert lines[:-1] == [line(n) for n in range(len(lines) - 1)]  # each once, in order, none lost


def test_bad_requests_get_a_clear_status_and_change_nothing(logs: Cluster) -> None:
    client = logs.client
    run_id = client.launch_process("farm", "burst-3000").run_id
    client.wait_run(run_id, 30)
    before = client.get_run_log(run_id)
    with pytest.raises(InvalidArgument, match=r"offset -1 is out of range"):
        client.get_run_log(run_id, -1)
    with pytest.raises(InvalidArgument, match=r"offset 3001 is out of range: .* has logged 3000 lines"):
        client.get_run_log(run_id, 3001)
    with pytest.raises(InvalidArgument, match=r"limit must be within 0\.\.10000 lines, got 10001"):
        client.get_run_log(run_id, 0, 10_001)
    with pytest.raises(InvalidArgument, match="offset 3001 is out of range"):
        list(client.follow_run_log(run_id, 3001))
    with pytest.raises(InvalidArgument, match="run_id"):
        client.get_run_log("not a run id!")
    with pytest.raises(NotFound, match="run 'r-unknown' does not exist"):
        client.get_run_log("r-unknown")
    with pytest.raises(NotFound, match="run 'r-unknown' does not exist"):
        list(client.follow_run_log("r-unknown"))
    assert client.get_run_log(run_id) == before
    # The end offset is a valid offset: an empty page, the log's end.
    page = client.get_run_log(run_id, 3000)
    assert (page.lines, page.offset, page.ended) == ((), 3000, True)


def test_ended_runs_are_pruned_with_their_logs_by_number_and_the_last_run_stays(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path), run_keep_per_process=2, run_prune_interval_s=0.05)
    try:
        cluster.start_controller()
        cluster.start_worker(LOG_APP)
        client = cluster.client
        run_ids = []
        for _ in range(5):
            run_ids.append(client.launch_process("farm", "burst-3000").run_id)
            assert client.wait_run(run_ids[-1], 30).state is S.DONE
        assert_eventually(
            lambda: [r.run_id for r in client.list_runs("farm", "burst-3000")] == run_ids[:2:-1], 10
        )
        for pruned in run_ids[:3]:
            with pytest.raises(NotFound):
                client.get_run(pruned)
            with pytest.raises(NotFound):
                client.get_run_log(pruned)
        assert read_all(client, run_ids[-1])[0] == [line(n) for n in range(3000)]
        assert cluster.controller is not None
        assert cluster.controller.controller.metrics.runs_pruned == 3
    finally:
        cluster.close()


def test_ended_runs_are_pruned_by_age_but_never_a_records_last_run(tmp_path: Path) -> None:
    # 0.5 s, in days: every ended run is old at once.
    cluster = Cluster(embedded_uri(tmp_path), run_retention_days=0.5 / 86400, run_prune_interval_s=0.05)
    try:
        cluster.start_controller()
        cluster.start_worker(LOG_APP)
        client = cluster.client
        first = client.launch_process("farm", "burst-3000").run_id
        client.wait_run(first, 30)
        second = client.launch_process("farm", "burst-3000").run_id
        client.wait_run(second, 30)

        def pruned() -> bool:
            try:
                client.get_run(first)
            except NotFound:
                return True
            return False

        assert_eventually(pruned, 10)
        with pytest.raises(NotFound):
            client.get_run_log(first)
        assert client.get_run(second).state is S.DONE  # the record's last run stays, with its log
        assert client.get_run_log(second).end_offset == 3000
    finally:
        cluster.close()


@pytest.mark.parametrize("process_id", ["prints", "prints-isolated"])
def test_capture_output_keeps_print_and_logging_as_lines_of_the_run(logs: Cluster, process_id: str) -> None:
    client = logs.client
    run_id = client.launch_process("farm", process_id).run_id
    assert client.wait_run(run_id, 30).state is S.DONE
    assert read_all(client, run_id)[0] == PRINTED


def test_capture_output_of_an_async_process_and_none_by_default_in_a_thread(logs: Cluster) -> None:
    client = logs.client
    captured = client.launch_process("farm", "prints-async").run_id
    assert client.wait_run(captured, 30).state is S.DONE
    assert read_all(client, captured)[0] == ["from a coroutine", "ERROR farm.app: an error"]
    plain = client.launch_process("farm", "prints-uncaptured").run_id
    assert client.wait_run(plain, 30).state is S.DONE
    assert read_all(client, plain)[0] == ["direct"]  # only what the code logged itself
