"""The store contract for what looks new, on every store (see test_store_contract).

The MongoDB store inserts a launch's run and key and a define's records (an
insert costs FerretDB a tenth of an upsert), and upserts them instead when one
exists already: a requeued run, a re-defined record, a retried batch. Either
way the newest write wins whole, and a deposed leader's write is refused.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from shards.models import Progress
from shards.states import ProcessState
from shards_controller.store import StaleTerm, Store, WriteBatch
from tests.test_store_contract import OpenStore, by_key, open_store, record, run, store
from tests.test_store_contract_leadership import deposed_leader

__all__ = ["open_store", "store"]  # the fixtures, shared with test_store_contract


async def test_a_run_written_again_as_new_is_replaced_whole(store: Store) -> None:
    launched = run("r1", idempotency_key="key-1")
    await store.write(WriteBatch(runs=[launched, run("r2", "p2")]), term=1)
    # A requeued run (back to scheduled, never started) is written as a launch writes it.
    requeued = replace(launched, progress=Progress("waiting again", 0.0), attempt=2)
    await store.write(WriteBatch(runs=[requeued, run("r3", "p3")]), term=1)
    assert await store.get_run("r1") == requeued
    assert await store.get_run("r3") == run("r3", "p3")
    assert await store.find_run_by_idempotency_key("key-1") == requeued


async def test_a_record_defined_again_is_replaced_whole_beside_new_ones(store: Store) -> None:
    await store.write(WriteBatch(records=[record("p1", name="First"), record("p2")]), term=1)
    renamed = record("p1", name="Renamed", revision=3)
    await store.write(WriteBatch(records=[renamed, record("p3")]), term=1)
    assert by_key(await store.load_records()) == {
        ("s1", "p1"): renamed,
        ("s1", "p2"): record("p2"),
        ("s1", "p3"): record("p3"),
    }
    assert await store.max_revision() >= 3


async def test_a_deposed_leader_cannot_write_as_new_what_the_new_leader_wrote(open_store: OpenStore) -> None:
    a, b, old, new = await deposed_leader(open_store)
    mine = record("p7", name="The new leader's", revision=2)
    await b.write(WriteBatch(records=[mine], runs=[run("r7")]), new.term)
    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(records=[record("p7", name="The old leader's")]), old.term)
    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(runs=[run("r7", error="the old leader's")]), old.term)
    assert await b.load_records() == [mine]
    assert await b.get_run("r7") == run("r7")
    assert ProcessState.SCHEDULED is run("r7").state  # written as a launch writes a run
