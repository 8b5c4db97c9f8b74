"""Fan-out of record changes to watchers, and the change log a watch resumes from.

Every published change carries a controller-wide revision and the whole record,
so a watcher never needs two messages to know a process's state.

A watcher's buffer keeps state changes in order and only the latest progress
per process: a slow watcher skips intermediate progress, never a state change.
State changes are bounded too: a watcher that falls further behind than
``max_pending_states`` is cut off with RESOURCE_EXHAUSTED and the revision to
resume from, which the client does by itself. So no watcher can make the
controller grow without bound.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from shards.models import ProcessFilter, ProcessRecord, WatchEvent, WatchEventType


@dataclass(frozen=True, slots=True)
class Change:
    """One published change. ``record`` is None when the record was removed."""

    revision: int
    scope_id: str
    process_id: str
    record: ProcessRecord | None
    is_state_change: bool

    def to_event(self) -> WatchEvent:
        if self.record is None:
            removed = ProcessRecord(self.scope_id, self.process_id, revision=self.revision)
            return WatchEvent(WatchEventType.REMOVED, self.revision, removed)
        return WatchEvent(WatchEventType.CHANGED, self.revision, self.record)


class WatcherOverflow(Exception):
    """The watcher fell too far behind; it must resume from ``resume_revision``."""

    def __init__(self, resume_revision: int) -> None:
        super().__init__(f"watcher fell behind; resume from revision {resume_revision}")
        self.resume_revision = resume_revision


class WatcherClosed(Exception):
    """The controller stopped leading; the watch must resume elsewhere."""


class Watcher:
    """The pending changes of one watch stream."""

    def __init__(self, process_filter: ProcessFilter, max_pending_states: int) -> None:
        self.filter = process_filter
        self._max_states = max_pending_states
        # Keys: ("s", revision) for state changes, (scope, process) for the
        # pending progress of a process. Ordered by revision: a replaced
        # progress entry moves to the end.
        self._pending: OrderedDict[object, Change] = OrderedDict()
        self._state_count = 0
        self._wake = asyncio.Event()
        self._last_delivered = 0
        self.overflowed = False
        self.closed = False

    def offer(self, change: Change) -> None:
        if self.overflowed or not self.wants(change):
            return
        key = (change.scope_id, change.process_id)
        # Only progress waits under this key: a later change carries newer progress.
        self._pending.pop(key, None)
        if change.is_state_change:
            if self._state_count >= self._max_states:
                self.overflowed = True
                self._pending.clear()
                self._wake.set()
                return
            self._pending[("s", change.revision)] = change
            self._state_count += 1
        else:
            self._pending[key] = change
        self._wake.set()

    def wants(self, change: Change) -> bool:
        if change.scope_id != self.filter.scope_id:
            return False
        # Removals and records that moved out of the filter still concern the
        # watcher when it may hold them. A filter on states (active only; an
        # active process always passes the level and special filters) takes
        # every change of the scope: the watch sends one that left the filter
        # as a removal. A record's name and level change only on a define.
        if self.filter.depends_on_state:
            return True
        return change.record is None or self.filter.matches(change.record)

    async def next_batch(self) -> list[Change]:
        """The pending changes, oldest first; waits while there are none."""
        while not self._pending and not self.overflowed and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            raise WatcherClosed()
        if self.overflowed:
            raise WatcherOverflow(self._last_delivered)
        batch = list(self._pending.values())
        self._pending.clear()
        self._state_count = 0
        return batch

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def delivered(self, revision: int) -> None:
        self._last_delivered = max(self._last_delivered, revision)

    @property
    def pending_count(self) -> int:
        return len(self._pending)


class WatchHub:
    """Publishes changes to the watchers of their scope and keeps the recent change log."""

    def __init__(self, change_log_size: int, max_pending_states: int) -> None:
        self._by_scope: dict[str, set[Watcher]] = {}
        self._log: deque[Change] = deque(maxlen=change_log_size)
        # Every change after this revision is in the log.
        self._floor = 0
        self._max_pending_states = max_pending_states

    def subscribe(self, process_filter: ProcessFilter) -> Watcher:
        watcher = Watcher(process_filter, self._max_pending_states)
        self._by_scope.setdefault(process_filter.scope_id, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        watchers = self._by_scope.get(watcher.filter.scope_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._by_scope[watcher.filter.scope_id]

    def log(self, changes: Iterable[Change]) -> None:
        """Keep ``changes`` in the change log (what a watch resumes from)."""
        for change in changes:
            if len(self._log) == self._log.maxlen:
                self._floor = self._log[0].revision
            self._log.append(change)

    def fan_out(self, changes: Iterable[Change]) -> None:
        """Hand ``changes`` to the watchers of their scope."""
        for change in changes:
            for watcher in self._by_scope.get(change.scope_id, ()):
                watcher.offer(change)

    def changes_since(self, revision: int) -> list[Change] | None:
        """The logged changes after ``revision``, or None when the log no longer reaches back that far."""
        if revision < self._floor:
            return None
        return [change for change in self._log if change.revision > revision]

    def close_all(self) -> None:
        """End every watch (the controller stops leading)."""
        for watchers in self._by_scope.values():
            for watcher in watchers:
                watcher.close()

    def reset(self, revision: int) -> None:
        """Forget the log: it covers what happens after ``revision`` (a new leadership)."""
        self._log.clear()
        self._floor = revision

    @property
    def watcher_count(self) -> int:
        return sum(len(watchers) for watchers in self._by_scope.values())
