"""Run log lines by offset, on both sides, without servers: the worker's buffer (what it ships, keeps,
forgets, sends again) and the controller's log of a run (a resend appended once, a gap, the cap), on
a real embedded store."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from shards.models import Run
from shards.states import ProcessState
from shards_controller.config import ControllerConfig
from shards_controller.run_logs import LOST_LINE, RunLogs
from shards_controller.state import State
from shards_controller.store import EmbeddedStore
from shards_controller.watch import WatchHub
from shards_worker import log_buffer
from shards_worker.log_buffer import LogBuffer


def lines(first: int, count: int) -> list[str]:
    return [f"line {n}" for n in range(first, first + count)]


def test_the_buffer_ships_in_whole_events_forgets_what_is_stored_and_sends_the_rest_again() -> None:
    buffer = LogBuffer()
    assert buffer.take(deque(lines(0, 2500))) == 2500
    events = buffer.line_events("r1")  # at most LINES_PER_TICK a tick; the rest at the next
    assert log_buffer.LINES_PER_TICK == 2000 and buffer.backlog
    events += buffer.line_events("r1")
    assert [(e.log_offset, len(e.log_lines)) for e in events] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert all(e.has_log_offset and not e.replaces_log for e in events)
    assert not buffer.backlog and buffer.line_events("r1") == []  # all shipped
    buffer.acked(1500)
    assert (buffer.offset, len(buffer.pending)) == (1500, 1000)
    buffer.rewind()  # a broken stream: what is not stored goes again, said to be a resend
    again = buffer.line_events("r1")
    assert [(e.log_offset, len(e.log_lines), e.replaces_log) for e in again] == [(1500, 1000, True)]
    assert list(again[0].log_lines) == lines(1500, 1000)
    offset, rest = buffer.rest()
    assert (offset, rest) == (1500, lines(1500, 1000))  # what goes with the end
    assert list(buffer.tail) == lines(2450, 50)


def test_lines_the_buffer_could_not_keep_make_the_next_event_a_resend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_buffer, "MAX_KEPT_LINES", 100)
    buffer = LogBuffer()
    buffer.take(deque(lines(0, 250)))  # nothing shipped yet: the oldest 150 go
    (event,) = buffer.line_events("r1")
    assert (event.log_offset, list(event.log_lines), event.replaces_log) == (150, lines(150, 100), True)


@pytest.fixture
def logs(tmp_path: Path, aio_runner: asyncio.Runner) -> Iterator[RunLogs]:
    """The controller's run logs on a real embedded store, as the leader of its term."""
    store = EmbeddedStore(tmp_path / "store.db")
    aio_runner.run(store.open())
    lease = aio_runner.run(store.acquire_lease("a", "a:1", timedelta(seconds=30)))
    assert lease is not None
    state = State(ControllerConfig(log_max_lines=1000), store, WatchHub(100, 100))
    state.term = lease.term
    state.leading = True
    yield RunLogs(state)
    aio_runner.run(store.close())


RUN = Run(run_id="r1", scope_id="s1", process_id="p1", state=ProcessState.RUNNING)


async def test_a_resend_is_appended_once_and_lines_past_a_gap_wait_for_it(logs: RunLogs) -> None:
    assert logs.append("r1", 0, lines(0, 10)) == lines(0, 10)
    assert logs.append("r1", 5, lines(5, 10)) == lines(10, 5)  # the overlap is skipped
    assert logs.append("r1", 20, lines(20, 5)) == []  # a lost event before it: not taken
    assert logs.append("r1", 15, lines(15, 10), resend=True) == lines(15, 10)
    await logs.flush()
    page = await logs.page(RUN, 0, 0)
    assert (list(page.lines), page.end, page.dropped) == (lines(0, 25), 25, 0)


async def test_what_a_worker_no_longer_had_is_marked_and_counted_lost(logs: RunLogs) -> None:
    logs.append("r1", 0, lines(0, 3))
    logs.append("r1", 7, lines(7, 2), resend=True)  # lines 3..6 went before they were sent
    await logs.flush()
    page = await logs.page(RUN, 0, 0)
    assert list(page.lines) == [*lines(0, 3), *[LOST_LINE] * 4, *lines(7, 2)]
    assert logs._state.metrics.log_lines_lost == 4


async def test_reads_see_stored_lines_only_and_the_cap_drops_whole_chunks(logs: RunLogs) -> None:
    logs.append("r1", 0, lines(0, 1300))
    # Received, not yet stored: nothing to read (the lines dropped past the cap are settled).
    before = await logs.page(RUN, 0, 0)
    assert (before.lines, before.end, before.dropped) == ((), 512, 512)
    await logs.flush()
    page = await logs.page(RUN, 0, 0)
    # 1,300 lines past a cap of 1,000: the oldest chunks of 256 go until at most 1,000 are left.
    assert (page.offset, page.dropped, page.end) == (512, 512, 1300)
    assert list(page.lines) == lines(512, 788)
    assert logs._state.metrics.log_lines_dropped == 512
    assert logs._state.metrics.log_lines_stored == 788


async def test_a_page_stays_under_two_mib_whatever_its_lines(logs: RunLogs) -> None:
    long = "x" * 4000
    logs.append("r1", 0, [long] * 1000)  # 4 MB of lines
    await logs.flush()
    page = await logs.page(RUN, 0, 1000)
    assert 500 <= len(page.lines) < 1000 and page.next_offset == len(page.lines)
    assert sum(len(line) + 8 for line in page.lines) <= 2 * 1024 * 1024
    rest = await logs.page(RUN, page.next_offset, 1000)
    assert rest.offset == page.next_offset and len(page.lines) + len(rest.lines) == 1000


def test_moving_lines_in_slices_ends_when_a_runs_end_took_them_meanwhile() -> None:
    """The collector yields between slices; a run's end takes what is left then (it once spun
    forever on an empty deque, and nothing of any run was shipped again)."""
    buffer = LogBuffer()
    logs: deque[str] = deque(lines(0, 3 * log_buffer.SLICE_LINES))

    async def both() -> None:
        collector = asyncio.ensure_future(log_buffer.take_in_slices([(buffer, logs)]))
        await asyncio.sleep(0)  # the collector took a slice and yields
        buffer.take(logs)  # the run's end takes the rest
        await asyncio.wait_for(collector, 5)

    asyncio.run(both())
    assert buffer.total == 3 * log_buffer.SLICE_LINES and not logs
    assert list(buffer.pending) == lines(0, 3 * log_buffer.SLICE_LINES)
