"""Unit: the committer publishes only what the store accepted, and its barrier waits for writes in flight."""

from __future__ import annotations

import asyncio
from typing import cast

from shards.models import ProcessRecord
from shards.states import ProcessState
from shards_controller.commit import Committer
from shards_controller.store import Store, WriteBatch
from shards_controller.watch import Change


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
