"""The leader's records in memory, and the one way to change them: stage, then commit.

State lives in memory twice:

- ``working``: the newest staged records, used to decide (e.g. to refuse a
  second launch while the first is being written);
- ``committed``: what is persisted and published, used to answer reads and
  to start watches, so nobody is ever told of a state that could be lost.

An operation checks and stages its change synchronously (so two concurrent
requests cannot both pass a check), then waits in ``commit`` for the
committer to persist it; the committer then calls ``publish``, which moves
the change into the committed view and on to the watchers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from shards.errors import NotFound, ShardsError, Unavailable
from shards.models import ProcessFilter, ProcessRecord, Run, sort_key
from shards_controller.commit import Committer, CommitterStopped, StoreWriteInterrupted
from shards_controller.config import ControllerConfig
from shards_controller.errors import NotLeader
from shards_controller.fast_replace import replace
from shards_controller.metrics import ControllerMetrics
from shards_controller.store import StaleTerm, Store
from shards_controller.watch import Change, WatchHub

T = TypeVar("T")
Views = dict[str, dict[str, ProcessRecord]]


def now() -> datetime:
    # Milliseconds: what MongoDB stores, so a record reads back equal from every store.
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def new_run_id() -> str:
    # Time-ordered prefix: run ids sort roughly by creation, which helps humans.
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:16]}"


class State:
    """What every part of a leading controller shares: its term, its records and its writer."""

    def __init__(self, config: ControllerConfig, store: Store, hub: WatchHub) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.term = 0
        self.leader_address = ""
        self.leading = False
        self.committer_or_none: Committer | None = None
        # Told when a write fails because another controller took a later term.
        self.on_stale_term: Callable[[], None] = lambda: None
        self.background: set[asyncio.Task[None]] = set()
        # Counted across leaderships: never reset.
        self.metrics = ControllerMetrics()
        self._change_waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self.reset()

    def reset(self) -> None:
        # Those waiting for a record to change (``changed``) will not see it here: ask the leader.
        for waiters in self._change_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(NotLeader(self.leader_address))
        self._change_waiters = {}
        self.working: Views = {}
        # The keys of the working records that have a schedule: what the schedules' tick looks at
        # (every record, ten times a second, was a tenth of a core at 10,000 records).
        self.scheduled: set[tuple[str, str]] = set()
        self.committed: Views = {}
        self.revision = 0
        self.committed_revision = 0
        self.journal_floor = 0  # every journal entry after this revision is still stored

    def require_leader(self) -> None:
        if not self.leading:
            raise NotLeader(self.leader_address)

    @property
    def committer(self) -> Committer:
        if self.committer_or_none is None:
            raise NotLeader(self.leader_address)
        return self.committer_or_none

    # ------------------------------------------------------------ the committed view (reads)

    def list_processes(self, process_filter: ProcessFilter) -> tuple[list[ProcessRecord], int]:
        self.require_leader()
        scope = self.committed.get(process_filter.scope_id, {})
        records = sorted((r for r in scope.values() if process_filter.matches(r)), key=sort_key)
        return records, self.committed_revision

    def get_process(self, scope_id: str, process_id: str) -> ProcessRecord:
        self.require_leader()
        record = self.committed.get(scope_id, {}).get(process_id)
        if record is None:
            raise NotFound(f"process {process_id!r} is not defined in scope {scope_id!r}")
        return record

    # ------------------------------------------------------------ the working view

    def record(self, scope_id: str, process_id: str) -> ProcessRecord | None:
        return self.working.get(scope_id, {}).get(process_id)

    def set_working(self, record: ProcessRecord) -> None:
        """Make ``record`` the working record of its process (the one way to, with ``drop_working``)."""
        self.working.setdefault(record.scope_id, {})[record.process_id] = record
        if record.schedule:
            self.scheduled.add(record.key)
        elif self.scheduled:
            self.scheduled.discard(record.key)

    def drop_working(self, scope_id: str, process_id: str) -> None:
        scope = self.working.get(scope_id, {})
        scope.pop(process_id, None)
        if not scope:
            self.working.pop(scope_id, None)
        self.scheduled.discard((scope_id, process_id))

    def require_record(self, scope_id: str, process_id: str) -> ProcessRecord:
        # A controller that stepped down while a request waited on its write
        # has forgotten every record: that is "ask the leader", not "no such process".
        self.require_leader()
        record = self.record(scope_id, process_id)
        if record is None:
            raise NotFound(f"process {process_id!r} is not defined in scope {scope_id!r}")
        return record

    def stage(self, record: ProcessRecord, *, state_change: bool = True) -> Change:
        """Give ``record`` the next revision and make it the working record."""
        self.revision += 1
        record = replace(record, revision=self.revision)
        self.set_working(record)
        return Change(self.revision, record.scope_id, record.process_id, record, state_change)

    def stage_removal(self, scope_id: str, process_id: str) -> Change:
        self.revision += 1
        self.drop_working(scope_id, process_id)
        return Change(self.revision, scope_id, process_id, None, True)

    # ------------------------------------------------------------ committing and publishing

    async def commit(self, change: Change, run: Run | None = None) -> None:
        await self.commit_all([(change, run)])

    async def commit_all(self, changes: list[tuple[Change, Run | None]]) -> None:
        """Persist and publish ``changes``; store failures become the caller's status."""
        try:
            await self.committer.commit(changes)
        except StaleTerm as error:
            raise NotLeader("") from error
        except ShardsError:
            raise
        except Exception as error:
            raise Unavailable(f"the store did not accept the change: {error}") from error

    async def changed(self, scope_id: str, process_id: str) -> None:
        """Until the record's next change is committed (or its removal; wake-ups may be spurious)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._change_waiters.setdefault((scope_id, process_id), []).append(waiter)
        try:
            await waiter
        finally:
            waiters = self._change_waiters.get((scope_id, process_id))
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._change_waiters[(scope_id, process_id)]

    def publish(self, changes: list[Change]) -> None:
        """The committer's report of what it persisted: now committed, and told to the watchers."""
        for change in changes:
            for waiter in self._change_waiters.pop((change.scope_id, change.process_id), ()):
                if not waiter.done():
                    waiter.set_result(None)
            if change.record is None:
                scope = self.committed.get(change.scope_id, {})
                scope.pop(change.process_id, None)
                if not scope:
                    self.committed.pop(change.scope_id, None)
            else:
                self.committed.setdefault(change.scope_id, {})[change.process_id] = change.record
            self.committed_revision = max(self.committed_revision, change.revision)
        self.hub.log(changes)
        # The watchers get the changes on the loop's next turn, after the
        # callers the commit woke: a launch's dispatch to its worker is written
        # before the watch streams, not after them. A watch that starts in
        # between has the changes in its snapshot, and skips them (its ``cut``).
        asyncio.get_running_loop().call_soon(self.hub.fan_out, changes)

    def commit_failed(self, changes: list[Change], error: BaseException) -> None:
        # Undo what the failed write staged, unless a later change replaced it.
        for change in changes:
            current = self.record(change.scope_id, change.process_id)
            if current is change.record or (change.record is None and current is None):
                committed = self.committed.get(change.scope_id, {}).get(change.process_id)
                if committed is None:
                    self.drop_working(change.scope_id, change.process_id)
                else:
                    self.set_working(committed)
        if isinstance(error, StaleTerm):
            self.on_stale_term()
        elif not isinstance(error, asyncio.CancelledError):
            self.metrics.store_errors.inc(("write",))

    async def committed_view(self) -> None:
        """Wait until what was read from the working view is persisted.

        Active runs change before their write is acknowledged; a reader takes
        its view first, then waits here, so it never answers with a state the
        store has not got (or might still refuse).
        """
        try:
            await self.committer.barrier()
        except (CommitterStopped, StoreWriteInterrupted, StaleTerm) as error:
            # The committer stopped, or stopped in the middle of a write: this controller
            # stepped down (the reader retries on the leader, as after a refused write).
            raise NotLeader(self.leader_address) from error
        except ShardsError:
            raise
        except Exception as error:  # the write before the reader's view failed: it may not hold
            raise Unavailable(f"the store did not take what this answer would show: {error}") from error

    # ------------------------------------------------------------ tasks and reads on a request's path

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def from_store(self, read: Awaitable[T]) -> T:
        """A store read on a request's path: when it fails, the store is unavailable (the
        caller may retry), as with a failed write; never an internal error of ours."""
        try:
            return await read
        except Exception as error:
            self.metrics.store_errors.inc(("read",))
            raise Unavailable(f"the store could not be read: {error}") from error
