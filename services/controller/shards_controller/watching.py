"""Serving one watch: the records of a scope (or the changes since a revision), then every change.

The last hop of a launch's data: the committer publishes, ``watch.WatchHub``
fans out, and each watch streams what its watcher was given. A resume from a
revision is served from the hub's memory, else from the store's journal,
which ``prune_journal_loop`` keeps bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from shards.errors import ResourceExhausted
from shards.models import ProcessFilter, WatchEvent, WatchEventType
from shards_controller.errors import WatchClosed
from shards_controller.state import State
from shards_controller.watch import Change, WatcherClosed, WatcherOverflow

log = logging.getLogger(__name__)


def _as_seen(change: Change, process_filter: ProcessFilter, held: set[str] | None) -> WatchEvent | None:
    """The event a watcher gets for ``change``: a record that left its filter is a removal."""
    record = change.record
    if record is not None and process_filter.matches(record):
        if held is not None:
            held.add(change.process_id)
        return change.to_event()
    if held is not None:
        if change.process_id not in held:
            return None  # never shown, so nothing to take back
        held.discard(change.process_id)
    return Change(change.revision, change.scope_id, change.process_id, None, True).to_event()


class Watching:
    def __init__(self, state: State) -> None:
        self._state = state

    async def watch(self, process_filter: ProcessFilter, from_revision: int) -> AsyncIterator[WatchEvent]:
        """The records of a scope, then every change; resumable from a revision.

        The watcher subscribes before anything is read, so a change published
        while the snapshot or replay is sent waits in its buffer; ``cut`` (the
        revision the snapshot or replay goes up to) keeps it from being sent twice.
        """
        state = self._state
        state.require_leader()
        hub = state.hub
        watcher = hub.subscribe(process_filter)
        try:
            if from_revision > state.committed_revision or 0 < from_revision < state.journal_floor:
                # From a future we never had (another store?), or from before
                # what the journal still keeps: start over.
                from_revision = -1
            replay = hub.changes_since(from_revision) if from_revision > 0 else None
            if replay is not None:
                cut = state.committed_revision
                scope_id = process_filter.scope_id
                seen = (
                    _as_seen(c, process_filter, None)
                    for c in replay
                    if c.revision <= cut and c.scope_id == scope_id
                )
                events = [event for event in seen if event is not None]
            elif from_revision > 0:
                events, cut = await self._replay_from_journal(process_filter, from_revision)
            else:
                records, cut = state.list_processes(process_filter)
                # In revision order, so that each snapshot event is a position
                # to resume from: a stream broken mid-snapshot (its controller
                # killed) resumes from the last record received and misses
                # no state change. In display order, it had to start over with
                # a new snapshot, and the changes in between were never seen.
                records.sort(key=lambda record: record.revision)
                events = [WatchEvent(WatchEventType.SNAPSHOT, r.revision, r) for r in records]
                if from_revision < 0:
                    events.insert(0, WatchEvent(WatchEventType.RESET, cut))
            metrics = state.metrics
            metrics.watch_messages += len(events) + 1
            # What the watcher holds, to tell it of a record that leaves its filter
            # (None after a resume: it may hold anything, so every leaver is told).
            held = None if from_revision > 0 else {e.process.process_id for e in events if e.process}
            for event in events:
                yield event
            yield WatchEvent(WatchEventType.SYNCED, cut)
            while True:
                try:
                    batch = await watcher.next_batch()
                except WatcherOverflow as overflow:
                    limit = state.config.watcher_max_pending_states
                    raise ResourceExhausted(
                        f"watcher fell more than {limit} state changes behind; "
                        f"resume from revision {max(overflow.resume_revision, cut)}"
                    ) from None
                except WatcherClosed:
                    raise WatchClosed(
                        "this controller stopped leading; resume the watch on the leader"
                    ) from None
                for change in batch:
                    if change.revision <= cut:
                        continue
                    watcher.delivered(change.revision)
                    told = _as_seen(change, process_filter, held)
                    if told is not None:
                        metrics.watch_messages += 1
                        yield told
        finally:
            hub.unsubscribe(watcher)

    async def _replay_from_journal(
        self, process_filter: ProcessFilter, from_revision: int
    ) -> tuple[list[WatchEvent], int]:
        """Changes after ``from_revision`` from the store's journal (older than the in-memory log).

        The journal has every state change; progress-only changes are not
        journaled, so a record whose newest revision is a progress change is
        sent as it is now.
        """
        state = self._state
        cut = state.committed_revision
        entries = await state.from_store(state.store.journal_since(from_revision, limit=10_000_000))
        found: list[tuple[int, WatchEvent]] = []
        journaled: set[int] = set()
        for entry in entries:
            if entry.revision > cut or entry.scope_id != process_filter.scope_id:
                continue
            journaled.add(entry.revision)
            change = Change(entry.revision, entry.scope_id, entry.process_id, entry.record, True)
            event = _as_seen(change, process_filter, None)
            if event is not None:
                found.append((entry.revision, event))
        for record in state.committed.get(process_filter.scope_id, {}).values():
            newer = from_revision < record.revision <= cut and record.revision not in journaled
            if newer and process_filter.matches(record):
                found.append((record.revision, WatchEvent(WatchEventType.CHANGED, record.revision, record)))
        found.sort(key=lambda item: item[0])
        return [event for _, event in found], cut

    async def prune_journal_loop(self) -> None:
        """Keep the store's journal bounded; a resume from before it becomes a RESET."""
        state = self._state
        while True:
            await asyncio.sleep(state.config.journal_prune_interval_s)
            try:
                await state.store.prune_journal(state.config.journal_keep)
                state.journal_floor = await state.store.journal_floor()
            except Exception as error:  # the next round tries again
                log.warning("pruning the journal failed: %s", error)
