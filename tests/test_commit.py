"""Unit: the committer publishes only what the store accepted, and its barrier waits for writes in flight;
a store that fails a read on a request's path makes the request unavailable, not an internal error."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from typing import cast

import pytest

from shards.errors import Unavailable
from shards.models import ProcessFilter, ProcessInfo, ProcessRecord, Run
from shards.states import ProcessState
from shards_controller.commit import Committer, StoreWriteInterrupted
from shards_controller.controller import LaunchRequest
from shards_controller.errors import NotLeader
from shards_controller.store import Store, WriteBatch
from shards_controller.store.embedded import EmbeddedStore
from shards_controller.watch import Change
from tests.support.leading import leading_controller
from tests.support.waiting import assert_eventually_async


class _GatedStore:
    """Only ``write``, the one method the committer calls; each write waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.written: list[WriteBatch] = []

    async def write(self, batch: WriteBatch, term: int) -> None:
        await self.gate.wait()
        self.written.append(batch)


def _change(revision: int) -> Change:
    record = ProcessRecord("s", "p", state=ProcessState.DONE, revision=revision)
    return Change(revision, "s", "p", record, True)


def _committer(store: _GatedStore, published: list[int]) -> Committer:
    return Committer(
        cast(Store, store),
        term=1,
        publish=lambda changes: published.extend(c.revision for c in changes),
        on_failure=lambda changes, error: None,
        flush_interval_s=60,
    )


def test_the_barrier_returns_at_once_when_nothing_is_being_written() -> None:
    async def scenario() -> None:
        store = _GatedStore()
        committer = _committer(store, [])
        committer.start()
        await asyncio.wait_for(committer.barrier(), 1)
        assert store.written == []
        await committer.stop()

    asyncio.run(scenario())


def test_the_barrier_waits_until_the_write_in_flight_is_persisted_and_published() -> None:
    async def scenario() -> None:
        store = _GatedStore()
        published: list[int] = []
        committer = _committer(store, published)
        committer.start()
        commit = asyncio.create_task(committer.commit([(_change(7), None)]))
        await asyncio.sleep(0)  # the writer takes the change and blocks in the store
        await asyncio.sleep(0)
        barrier = asyncio.create_task(committer.barrier())
        done, _ = await asyncio.wait({commit, barrier}, timeout=0.05)
        assert done == set()
        assert published == []
        store.gate.set()
        await asyncio.wait_for(barrier, 1)
        assert published == [7]
        assert [entry.revision for batch in store.written for entry in batch.journal] == [7]
        await commit
        await committer.stop()

    asyncio.run(scenario())


def test_a_write_cut_short_by_a_step_down_fails_its_callers_with_an_error_they_can_retry() -> None:
    """Not with a CancelledError, which would end the caller's own task (and leave a launch unanswered)."""

    async def scenario() -> None:
        store = _GatedStore()  # never opens: the write is in flight when the committer stops
        published: list[int] = []
        committer = _committer(store, published)
        committer.start()
        commit = asyncio.create_task(committer.commit([(_change(7), None)]))
        await assert_eventually_async(lambda: committer._writing, timeout_s=5)
        stopping = asyncio.create_task(committer.stop())
        with pytest.raises(StoreWriteInterrupted):
            await commit
        assert not commit.cancelled()
        assert published == []  # nothing the store did not confirm
        store.gate.set()  # the final write of what was queued, if any, may go through now
        await stopping

    asyncio.run(scenario())


class _UnreadableStore(EmbeddedStore):
    """An embedded store whose reads fail as a busy or unreachable database's do."""

    async def find_run_by_idempotency_key(self, key: str) -> Run | None:
        raise sqlite3.OperationalError("database is locked")

    async def get_run(self, run_id: str) -> Run | None:
        raise sqlite3.OperationalError("database is locked")


def test_a_store_read_that_fails_on_a_requests_path_is_unavailable_not_internal() -> None:
    async def scenario() -> None:
        async with leading_controller(_UnreadableStore(":memory:")) as controller:
            # Unavailable is what a client retries (the launch carries its key: it runs once).
            with pytest.raises(Unavailable, match="database is locked"):
                await controller.launch(LaunchRequest("s", "p", idempotency_key="k1"))
            with pytest.raises(Unavailable, match="the store could not be read"):
                await controller.get_run("no-such-run", wait_until_ended=False)
            assert controller.list_processes(ProcessFilter("s"))[0] == []  # nothing was staged

    asyncio.run(scenario())


class _FirstWriteHeldStore(EmbeddedStore):
    """An embedded store whose first write waits (a slow store) until it is cancelled."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.held: asyncio.Event | None = None  # set once the first write is held

    async def write(self, batch: WriteBatch, term: int) -> None:
        if self.held is not None and not self.held.is_set():
            self.held.set()
            await asyncio.Event().wait()  # until cancelled: the controller steps down
        await super().write(batch, term)


def test_a_launch_persisted_by_a_controller_stepping_down_is_answered_and_left_to_the_next_leader() -> None:
    async def scenario() -> None:
        store = _FirstWriteHeldStore()
        async with leading_controller(store) as controller:
            await controller.register_worker("w1", "127.0.0.1:1", 4, ("*",), set())
            store.held = asyncio.Event()
            first = asyncio.create_task(controller.launch(_defined("first")))
            await store.held.wait()  # its write is under way
            second = asyncio.create_task(controller.launch(_defined("second")))
            await asyncio.sleep(0)  # staged for a worker, and queued behind the write under way
            await controller.step_down()  # cuts the write short, then writes what is queued
            with pytest.raises(Unavailable):  # may or may not be stored: the client retries it
                await first
            launched = await second  # stored: answered, though its controller no longer leads
            stored = await store.get_run(launched.run_id)
            assert stored is not None and stored.state is ProcessState.RUNNING and stored.worker_id == "w1"
            # Nothing went to the worker from a controller that no longer leads:
            # the next leader learns from the worker's heartbeat that it never got the run.
            assert controller._dispatcher._lines == {}

    asyncio.run(scenario())


def test_a_repeated_launch_waiting_on_a_write_the_step_down_cuts_short_is_told_to_go_to_the_leader() -> None:
    """Not INTERNAL (seen under load in the bench: StoreWriteInterrupted reached the client)."""

    async def scenario() -> None:
        store = _FirstWriteHeldStore()
        async with leading_controller(store) as controller:
            await controller.register_worker("w1", "127.0.0.1:1", 4, ("*",), set())
            store.held = asyncio.Event()
            request = replace(_defined("first"), idempotency_key="k1")
            first = asyncio.create_task(controller.launch(request))
            await store.held.wait()  # its write is under way
            # The same key again: answered from memory once the write under way is persisted.
            again = asyncio.create_task(controller.launch(request))
            await asyncio.sleep(0)
            await controller.step_down()
            with pytest.raises(Unavailable):
                await first
            with pytest.raises(NotLeader):
                await again

    asyncio.run(scenario())


def _defined(process_id: str) -> LaunchRequest:
    """A launch that brings its definition (no worker is asked to describe the scope)."""
    return LaunchRequest("s", process_id, definition=ProcessInfo(process_id))
