"""The store contract for leadership, on every store (see test_store_contract): the lease,
its terms, and the fencing of a deposed leader's writes by the term it wrote in."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shards.models import WorkerInfo
from shards.states import ProcessState
from shards_controller.store import Lease, StaleTerm, Store, WriteBatch
from tests.test_store_contract import (
    LONG,
    SHORT,
    T0,
    OpenStore,
    by_key,
    covers,
    entry,
    eventually,
    open_store,
    record,
    run,
    store,
    take_over,
)

__all__ = ["open_store", "store"]  # the fixtures, shared with test_store_contract


# -- lease


async def test_lease_fresh_store_starts_at_term_1_and_renewing_keeps_it(store: Store) -> None:
    lease = await store.acquire_lease("a", "a:1", LONG)
    assert lease is not None
    assert (lease.holder_id, lease.address, lease.term) == ("a", "a:1", 1)
    assert lease.expires_at > datetime.now(UTC) + LONG / 2

    renewed = await store.acquire_lease("a", "a:2", LONG)
    assert renewed is not None
    assert (renewed.holder_id, renewed.address, renewed.term) == ("a", "a:2", 1)
    assert renewed.expires_at >= lease.expires_at
    assert await store.read_lease() == renewed


async def test_lease_refused_to_another_holder_while_valid(store: Store) -> None:
    assert await store.acquire_lease("a", "a:1", LONG) is not None
    assert await store.acquire_lease("b", "b:1", LONG) is None
    current = await store.read_lease()
    assert current is not None
    assert (current.holder_id, current.term) == ("a", 1)


async def test_lease_taken_over_after_expiry_with_next_term(store: Store) -> None:
    first = await store.acquire_lease("a", "a:1", SHORT)
    assert first is not None
    assert await store.acquire_lease("b", "b:1", LONG) is None

    taken = await take_over(store, "b")
    assert taken.term == first.term + 1
    assert await store.acquire_lease("a", "a:1", LONG) is None  # a's lease is gone
    assert await store.read_lease() == taken


async def _until_expired(store: Store) -> None:
    """Until the lease's own expiry time has passed (as the store reads it)."""

    async def expired() -> bool:
        lease = await store.read_lease()
        return lease is not None and lease.expires_at <= datetime.now(UTC)

    await eventually(expired)


async def test_lease_own_expired_lease_gets_a_new_term(store: Store) -> None:
    first = await store.acquire_lease("a", "a:1", SHORT)
    assert first is not None

    await _until_expired(store)
    again = await store.acquire_lease("a", "a:1", LONG)
    assert again is not None
    assert again.term == first.term + 1


async def test_lease_renewed_by_its_leader_in_its_term_even_after_it_ran_out(store: Store) -> None:
    first = await store.acquire_lease("a", "a:1", SHORT)
    assert first is not None

    await _until_expired(store)
    renewed = await store.renew_lease("a", "a:2", LONG, first.term)
    assert renewed is not None
    assert (renewed.holder_id, renewed.address, renewed.term) == ("a", "a:2", first.term)
    assert await store.read_lease() == renewed
    assert await store.acquire_lease("b", "b:1", LONG) is None  # valid again
    assert await store.renew_lease("b", "b:1", LONG, first.term) is None  # not b's
    assert await store.renew_lease("a", "a:1", LONG, first.term + 1) is None  # not a's term


async def test_lease_not_renewed_once_another_took_it(store: Store) -> None:
    first = await store.acquire_lease("a", "a:1", SHORT)
    assert first is not None
    taken = await take_over(store, "b")
    assert await store.renew_lease("a", "a:1", LONG, first.term) is None
    assert await store.read_lease() == taken


async def test_lease_release_lets_another_take_it_at_once(store: Store) -> None:
    first = await store.acquire_lease("a", "a:1", LONG)
    assert first is not None
    await store.release_lease("b")  # not the holder: no effect
    assert await store.acquire_lease("b", "b:1", LONG) is None

    await store.release_lease("a")
    taken = await store.acquire_lease("b", "b:1", LONG)
    assert taken is not None
    assert (taken.holder_id, taken.term) == ("b", first.term + 1)


async def test_lease_race_on_a_fresh_store_has_one_winner(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(4)]
    leases = await asyncio.gather(*(s.acquire_lease(f"c{i}", f"c{i}:1", LONG) for i, s in enumerate(stores)))
    winners = [lease for lease in leases if lease is not None]
    assert len(winners) == 1
    assert winners[0].term == 1
    assert await stores[0].read_lease() == winners[0]


# -- fencing


async def deposed_leader(open_store: OpenStore) -> tuple[Store, Store, Lease, Lease]:
    """Controller A led in term n, B has taken over in term n+1; A does not know yet."""
    a, b = await open_store(), await open_store()
    old = await a.acquire_lease("a", "a:1", SHORT)
    assert old is not None
    return a, b, old, await take_over(b, "b")


async def test_fencing_records(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    old = await a.acquire_lease("a", "a:1", SHORT)
    assert old is not None
    await a.write(WriteBatch(records=[record("p1", state=ProcessState.RUNNING, revision=1)]), old.term)
    await a.write(WriteBatch(records=[record("p2", revision=2)]), old.term)

    new = await take_over(b, "b")
    assert new.term == old.term + 1
    lost = record("p1", state=ProcessState.LOST, revision=3, error="worker gone")
    await b.write(WriteBatch(records=[lost]), new.term)

    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(records=[record("p1", state=ProcessState.DONE, revision=4)]), old.term)
    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(removed=[("s1", "p1")]), old.term)
    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(records=[record("p9")]), old.term)
    assert by_key(await a.load_records()) == {lost.key: lost, ("s1", "p2"): record("p2", revision=2)}

    # The current term writes, replaces and removes as usual.
    idle = record("p1", revision=5)
    await b.write(WriteBatch(records=[idle], removed=[("s1", "p2")]), new.term)
    assert await b.load_records() == [idle]


async def test_fencing_runs_and_journal(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    old = await a.acquire_lease("a", "a:1", SHORT)
    assert old is not None
    await a.write(WriteBatch(runs=[run("r1", state=ProcessState.RUNNING)], journal=[entry(1)]), old.term)

    new = await take_over(b, "b")
    lost = run("r1", state=ProcessState.LOST, ended_at=T0 + timedelta(seconds=1))
    await b.write(WriteBatch(runs=[lost], journal=[entry(2)]), new.term)

    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(runs=[run("r1", state=ProcessState.DONE)]), old.term)
    with pytest.raises(StaleTerm):
        await a.write(WriteBatch(runs=[run("r2")], journal=[entry(3)]), old.term)
    assert await a.get_run("r1") == lost
    assert await a.get_run("r2") is None
    assert [e.revision for e in await a.journal_since(0, 10)] == [1, 2]

    await b.write(WriteBatch(runs=[run("r2")], journal=[entry(3)]), new.term)
    assert await b.get_run("r2") == run("r2")
    assert await covers(b, 3)


async def test_fencing_workers(open_store: OpenStore) -> None:
    a, b, old, new = await deposed_leader(open_store)
    worker = WorkerInfo("w1", "127.0.0.1:7001", registered_at=T0)
    await b.save_worker(worker, new.term)

    with pytest.raises(StaleTerm):
        await a.save_worker(replace(worker, address="127.0.0.1:9999"), old.term)
    with pytest.raises(StaleTerm):
        await a.delete_worker("w1", old.term)
    assert await a.load_workers() == [replace(worker, alive=False)]

    await b.delete_worker("w1", new.term)
    assert await b.load_workers() == []
