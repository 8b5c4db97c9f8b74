"""Unit: a watcher's buffer keeps every state change, coalesces progress, and is bounded."""

from __future__ import annotations

import asyncio

import pytest

from shards.models import ProcessFilter, ProcessRecord, Progress
from shards.states import ProcessState
from shards_controller.watch import Change, WatcherOverflow, WatchHub


def _change(revision: int, process_id: str, *, state: bool, rate: float = 0.0) -> Change:
    record = ProcessRecord(
        "s", process_id, state=ProcessState.RUNNING, progress=Progress("", rate), revision=revision
    )
    return Change(revision, "s", process_id, record, state)


def test_progress_is_coalesced_but_state_changes_are_all_kept_in_revision_order() -> None:
    hub = WatchHub(change_log_size=100, max_pending_states=100)
    watcher = hub.subscribe(ProcessFilter("s"))
    changes = [
        _change(1, "a", state=True),
        _change(2, "a", state=False, rate=0.1),
        _change(3, "b", state=False, rate=0.1),
        _change(4, "a", state=False, rate=0.2),
        _change(5, "b", state=True),
        _change(6, "a", state=False, rate=0.3),
    ]
    hub.fan_out(changes)
    batch = asyncio.run(watcher.next_batch())
    # a's progress 2 and 4 are superseded by 6; b's progress 3 by its state change 5
    assert [c.revision for c in batch] == [1, 5, 6]
    assert batch[-1].record is not None and batch[-1].record.progress.rate == 0.3


def test_a_watcher_that_falls_too_far_behind_is_cut_off_with_its_resume_revision() -> None:
    hub = WatchHub(change_log_size=1000, max_pending_states=10)
    watcher = hub.subscribe(ProcessFilter("s"))
    hub.fan_out([_change(1, "a", state=True)])
    first = asyncio.run(watcher.next_batch())
    watcher.delivered(first[-1].revision)
    behind = [_change(r, f"p{r}", state=True) for r in range(2, 30)]
    hub.log(behind)
    hub.fan_out(behind)
    assert watcher.pending_count == 0  # dropped, not grown: memory stays bounded
    with pytest.raises(WatcherOverflow) as overflow:
        asyncio.run(watcher.next_batch())
    assert overflow.value.resume_revision == 1
    # ... and the log still has everything after that revision for the resume
    replay = hub.changes_since(1)
    assert replay is not None and [c.revision for c in replay] == list(range(2, 30))


def test_progress_alone_never_overflows_however_much_arrives() -> None:
    hub = WatchHub(change_log_size=100, max_pending_states=5)
    watcher = hub.subscribe(ProcessFilter("s"))
    hub.fan_out([_change(r, f"p{r % 3}", state=False, rate=r / 10_000) for r in range(1, 10_000)])
    assert watcher.pending_count == 3 and not watcher.overflowed


def test_other_scopes_and_filtered_records_are_not_delivered() -> None:
    hub = WatchHub(change_log_size=100, max_pending_states=100)
    watcher = hub.subscribe(ProcessFilter("s", name_contains="keep"))
    other_scope = Change(1, "other", "keep-me", ProcessRecord("other", "keep-me", revision=1), True)
    filtered_out = Change(2, "s", "drop", ProcessRecord("s", "drop", name="drop", revision=2), True)
    kept = Change(3, "s", "keep", ProcessRecord("s", "keep", name="keep", revision=3), True)
    hub.fan_out([other_scope, filtered_out, kept])
    assert [c.revision for c in asyncio.run(watcher.next_batch())] == [3]


def test_the_log_says_when_it_no_longer_reaches_back() -> None:
    hub = WatchHub(change_log_size=5, max_pending_states=100)
    hub.reset(10)  # a new leadership starting at revision 10
    assert hub.changes_since(3) is None  # before this leadership: ask the store's journal
    hub.log([_change(r, "a", state=True) for r in range(11, 21)])
    assert hub.changes_since(12) is None  # 13..15 fell out of the 5-entry log
    replay = hub.changes_since(16)
    assert replay is not None and [c.revision for c in replay] == [17, 18, 19, 20]
