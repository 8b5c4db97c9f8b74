"""Group commit: persist changes in revision order, then publish them.

Every state change goes through one writer task. It takes everything queued
since its last write, sends it to the store as one batch (one round trip,
however many launches arrived meanwhile), then publishes the changes in
revision order and wakes their callers. So:

- a state change is persisted before anyone hears of it (the caller's reply
  and every watcher wait for the write);
- watchers see revisions in increasing order, which is what makes resuming a
  watch from a revision exact;
- progress is not written per report: it is published in order with the rest
  and written behind, the latest value per process, every ``flush_interval_s``.

Two batches may be in the store at once when they write different records and
runs (a run's end, and the next launch while that end is being written): on a
remote store a batch is a few round trips, and the second no longer waits for
the first. Each is still published, and its callers woken, only after every
batch before it has been: the order above holds, and a reader's barrier waits
for all of them. What a crash can leave is what a serial order could, but for
one: the later of two such batches stored and the earlier not. They share no
document, so each is whole or torn on its own and the take-over's repair
covers it; the journal then has a gap where the earlier batch's entries would
be, which a watch resumed from before it does not see (the changes never
happened for the new leader either).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shards._aio import cancel_and_wait
from shards.models import ProcessRecord, Run
from shards_controller.metrics import ControllerMetrics
from shards_controller.store import JournalEntry, Store, WriteBatch
from shards_controller.watch import Change

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    change: Change
    run: Run | None
    done: asyncio.Future[None] | None


# At most this many batches in the store at once (see the module's docstring).
WRITES_AT_ONCE = 2


@dataclass(slots=True)
class _Taken:
    """A batch taken from the queue: its items, its writes, the progress records it took
    from the dirty set (given back if it waits), and what it writes (record keys, run ids)."""

    pending: list[_Pending]
    batch: WriteBatch
    progress: dict[tuple[str, str], ProcessRecord]
    keys: set[object]


@dataclass(slots=True, eq=False)
class _Write:
    """A batch in the store: what it writes (record keys and run ids), its task, and whether
    the store has answered (it then waits only for the batches before it to be heard of)."""

    keys: set[object]
    task: asyncio.Task[None] = field(init=False)
    stored: bool = False


class CommitterStopped(RuntimeError):
    """A commit or barrier asked of a committer that has stopped (its controller stepped down)."""


class StoreWriteInterrupted(Exception):
    """A group commit stopped before the store answered: its changes may or may not be stored."""


class Committer:
    """The single writer of a leader's changes."""

    def __init__(
        self,
        store: Store,
        term: int,
        publish: Callable[[list[Change]], None],
        on_failure: Callable[[list[Change], BaseException], None],
        flush_interval_s: float,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics if metrics is not None else ControllerMetrics()
        self._term = term
        self._publish = publish
        self._on_failure = on_failure
        self._flush_interval_s = flush_interval_s
        self._queue: list[_Pending] = []
        self._progress_dirty: dict[tuple[str, str], ProcessRecord] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._writes: list[_Write] = []  # in flight, oldest first
        # Writes that failed so far, and the last one's error: a barrier whose wait saw one
        # fails too (what its caller read may be what the store did not take).
        self._failures = 0
        self._last_failure: BaseException | None = None

    async def _cut_writes_short(self) -> None:
        """Stop writing: the writes the store has not answered are cut short (their callers are
        told it may or may not be stored); one it has answered is heard of, as it waited to be."""
        unanswered = [write.task for write in self._writes if not write.stored]
        await cancel_and_wait([self._flusher, self._task, *unanswered])
        if self._writes:
            await asyncio.wait([write.task for write in self._writes])
        self._writes = []

    @property
    def _writing(self) -> bool:
        return any(not write.task.done() for write in self._writes)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="committer")
        self._flusher = asyncio.create_task(self._flush_progress_periodically(), name="progress-flusher")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._closed = True
        self._wake.set()
        await self._cut_writes_short()
        if self._queue or self._progress_dirty:
            await self._write_once()

    async def abandon(self, why: str = "the take-over was abandoned") -> None:
        """Stop without writing: what is queued fails (a take-over that did not complete,
        a step-down whose final write the store did not answer)."""
        self._closed = True
        await self._cut_writes_short()
        pending, self._queue = self._queue, []
        for item in pending:
            if item.done is not None and not item.done.done():
                item.done.set_exception(StoreWriteInterrupted(why))

    async def commit(self, changes: list[tuple[Change, Run | None]]) -> None:
        """Persist state changes (and their runs) in one batch, then publish them.

        Returns once all are persisted and published; raises what the store raised.
        """
        if self._closed:
            raise CommitterStopped("committer is stopped")
        if not changes:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for change, run in changes[:-1]:
            self._queue.append(_Pending(change, run, None))
        last_change, last_run = changes[-1]
        self._queue.append(_Pending(last_change, last_run, done))
        self._wake.set()
        await done

    async def barrier(self) -> None:
        """Return once everything queued or being written before the call is persisted.

        A reader of staged state (a run in the controller's working view) waits
        here so that it never answers with a change the store might still refuse:
        if a write failed meanwhile, this raises its error (the reader's view may
        hold what that write did not store).
        """
        if self._closed:
            raise CommitterStopped("committer is stopped")
        if not self._queue and not self._writing:
            return
        failures = self._failures
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(_BARRIER, None, done))
        self._wake.set()
        await done
        if self._failures != failures and self._last_failure is not None:
            raise self._last_failure

    def progress(self, change: Change) -> None:
        """Publish a progress change in order; its record is written behind."""
        assert change.record is not None
        self._queue.append(_Pending(change, None, None))
        self._progress_dirty[(change.scope_id, change.process_id)] = change.record
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._writes = [write for write in self._writes if not write.task.done()]
                taken = self._take(include_progress=False)
                if len(self._writes) >= WRITES_AT_ONCE or any(
                    not write.keys.isdisjoint(taken.keys) for write in self._writes
                ):
                    # Full, or the queue rewrites what a batch in flight writes: its turn after it.
                    self._give_back(taken)
                    await asyncio.wait([self._writes[0].task])
                    continue
                after = self._writes[-1].task if self._writes else None
                write = _Write(taken.keys)
                write.task = asyncio.create_task(self._write(taken, after, write), name="commit")
                self._writes.append(write)

    async def _flush_progress_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            if self._progress_dirty:
                # Through the queue's writer so that it never races a state write.
                self._queue.append(_Pending(_FLUSH, None, None))
                self._wake.set()

    async def _write_once(self) -> None:
        """Write the queue, progress included, as one batch (a committer that stops)."""
        await self._write(self._take(include_progress=True), None, None)

    def _take(self, include_progress: bool) -> _Taken:
        """The queue as one batch (the queue is then empty)."""
        pending, self._queue = self._queue, []
        batch = WriteBatch()
        records: dict[tuple[str, str], ProcessRecord] = {}
        removed: set[tuple[str, str]] = set()
        runs: dict[str, Run] = {}
        progress: dict[tuple[str, str], ProcessRecord] = {}
        flush = include_progress or any(item.change is _FLUSH for item in pending)
        if flush:
            progress, self._progress_dirty = self._progress_dirty, {}
            records.update(progress)
        for item in pending:
            change = item.change
            if _is_marker(change) or not change.is_state_change:
                continue
            key = (change.scope_id, change.process_id)
            if change.record is None:
                records.pop(key, None)
                removed.add(key)
            else:
                removed.discard(key)
                records[key] = change.record
            batch.journal.append(
                JournalEntry(change.revision, change.scope_id, change.process_id, change.record)
            )
            if item.run is not None:
                runs[item.run.run_id] = item.run
        # A key written by this batch takes its newest record, progress included.
        for key in records.keys() & self._progress_dirty.keys():
            newest = progress[key] = self._progress_dirty.pop(key)
            if newest.revision > records[key].revision:
                records[key] = newest
        for key in removed:
            if key in self._progress_dirty:
                progress[key] = self._progress_dirty.pop(key)
        batch.records = list(records.values())
        batch.removed = sorted(removed)
        batch.runs = list(runs.values())
        keys: set[object] = {*records, *removed, *runs}
        return _Taken(pending, batch, progress, keys)

    def _give_back(self, taken: _Taken) -> None:
        """Undo ``_take``: the batch waits its turn (what was queued since goes after it)."""
        self._queue[:0] = taken.pending
        for key, record in taken.progress.items():
            self._progress_dirty.setdefault(key, record)

    async def _write(self, taken: _Taken, after: asyncio.Task[None] | None, write: _Write | None) -> None:
        """Store a batch; its callers and watchers hear of it once ``after`` (the batch
        before it, if still in the store) has been heard of."""
        pending, batch = taken.pending, taken.batch
        changes = [item.change for item in pending if not _is_marker(item.change)]
        started = time.perf_counter()
        try:
            try:
                await self._store.write(batch, self._term)
                self._metrics.committed(time.perf_counter() - started, len(changes))
                if write is not None:
                    write.stored = True
            finally:
                if after is not None:
                    await asyncio.wait([after])  # heard of in revision order, failed or not
        except BaseException as error:
            log.error("store write failed (%d changes): %r", len(changes), error)
            self._on_failure(changes, error)
            # A write cut short (the committer stops: the controller steps
            # down) may or may not have reached the store: its callers get an
            # error they may retry (launches carry idempotency keys), never a
            # CancelledError of ours that would end their own task.
            failure = (
                StoreWriteInterrupted("the write was interrupted: this controller stopped leading")
                if isinstance(error, asyncio.CancelledError)
                else error
            )
            self._failures += 1
            self._last_failure = failure
            for item in pending:
                if item.done is not None and not item.done.done():
                    item.done.set_exception(failure)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        # Callers first, watchers second: the callers run on the loop's next
        # turn, in the order woken, and ``publish`` updates the committed view
        # at once but hands the changes to the watchers after the callers have
        # run, so a launch's dispatch to its worker is written before the
        # watch streams are.
        for item in pending:
            if item.done is not None and not item.done.done():
                item.done.set_result(None)
        self._publish(changes)


# Markers queued to ask the writer for a progress flush, or for a caller's
# wake-up once everything queued before it is written.
_FLUSH = Change(0, "", "", None, False)
_BARRIER = Change(0, "", "", None, False)


def _is_marker(change: Change) -> bool:
    return change is _FLUSH or change is _BARRIER
