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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

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
        self._writing = False
        # Writes that failed so far, and the last one's error: a barrier whose wait saw one
        # fails too (what its caller read may be what the store did not take).
        self._failures = 0
        self._last_failure: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="committer")
        self._flusher = asyncio.create_task(self._flush_progress_periodically(), name="progress-flusher")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._closed = True
        self._wake.set()
        await cancel_and_wait([self._flusher, self._task])
        if self._queue or self._progress_dirty:
            await self._write_once()

    async def abandon(self, why: str = "the take-over was abandoned") -> None:
        """Stop without writing: what is queued fails (a take-over that did not complete,
        a step-down whose final write the store did not answer)."""
        self._closed = True
        await cancel_and_wait([self._flusher, self._task])
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
            if self._queue:
                self._writing = True
                try:
                    await self._write_once(include_progress=False)
                finally:
                    self._writing = False

    async def _flush_progress_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            if self._progress_dirty:
                # Through the queue's writer so that it never races a state write.
                self._queue.append(_Pending(_FLUSH, None, None))
                self._wake.set()

    async def _write_once(self, include_progress: bool = True) -> None:
        pending, self._queue = self._queue, []
        batch = WriteBatch()
        records: dict[tuple[str, str], ProcessRecord] = {}
        removed: set[tuple[str, str]] = set()
        runs: dict[str, Run] = {}
        flush = include_progress or any(item.change is _FLUSH for item in pending)
        if flush:
            records.update(self._progress_dirty)
            self._progress_dirty = {}
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
            newest = self._progress_dirty.pop(key)
            if newest.revision > records[key].revision:
                records[key] = newest
        for key in removed:
            self._progress_dirty.pop(key, None)
        batch.records = list(records.values())
        batch.removed = sorted(removed)
        batch.runs = list(runs.values())
        changes = [item.change for item in pending if not _is_marker(item.change)]
        started = time.perf_counter()
        try:
            await self._store.write(batch, self._term)
            self._metrics.committed(time.perf_counter() - started, len(changes))
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
