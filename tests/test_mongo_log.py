"""The MongoDB store's commit log and its write-behind: the log's fence, what is read before and
after the write-behind, what a successor replays, the runs (and their records) held back until
they end, and the form an entry is stored in.

On FerretDB/PostgreSQL and FerretDB/SQLite (``backend_target``).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest

from shards.states import ProcessState
from shards_controller.store import JournalEntry, StaleTerm, WriteBatch, mongo_behind
from shards_controller.store.documents import record_from_doc
from shards_controller.store.mongo import MongoStore
from shards_controller.store.mongo_commands import record_doc, record_id
from tests.support.mongo import MongoTarget
from tests.support.mongo_stores import record, run, take_over

pytestmark = pytest.mark.mongo
S = ProcessState


async def test_the_log_refuses_a_term_older_than_its_newest_and_stores_nothing_of_it(
    two_stores: list[MongoStore],
) -> None:
    """With no lease to go by, the commit log fences: a store never logs below the newest term it
    has seen there, and a store that has not read the log yet reads its newest entry first."""
    store, other = two_stores
    newer = record("p1", state=S.LOST, revision=2)
    await store.write(WriteBatch(records=[newer], runs=[run("r1", state=S.LOST)]), term=5)
    for batch in (
        WriteBatch(records=[record("p1", state=S.DONE)]),
        WriteBatch(runs=[run("r1", state=S.DONE)]),
        WriteBatch(removed=[("s1", "p1")]),
        WriteBatch(records=[record("p2")]),
    ):
        for writer in (store, other):
            with pytest.raises(StaleTerm, match="term 3 is stale"):
                await writer.write(batch, term=3)
    for reader in (store, other):
        assert await reader.load_records() == [newer]
        assert await reader.load_active_runs() == []
    assert await store.get_run("r1") == run("r1", state=S.LOST)


async def test_a_deposed_leaders_next_log_slot_is_taken(two_stores: list[MongoStore]) -> None:
    old_leader, new_leader = two_stores
    await old_leader.write(WriteBatch(records=[record("p1", revision=1)]), term=3)
    assert [r.revision for r in await new_leader.load_records()] == [1]  # its take-over
    lost = record("p1", state=S.LOST, revision=2)
    await new_leader.write(WriteBatch(records=[lost]), term=4)
    with pytest.raises(StaleTerm, match="log slot 2 was written by term 4"):
        await old_leader.write(WriteBatch(records=[record("p1", state=S.DONE, revision=3)]), term=3)
    for reader in two_stores:
        assert await reader.load_records() == [lost]


async def test_a_deposed_leaders_late_write_behind_overwrites_nothing_newer(
    two_stores: list[MongoStore],
) -> None:
    """The runs written behind carry their writer's term, as every write's filter does."""
    old_leader, new_leader = two_stores
    if not new_leader.term_in_filters:
        pytest.skip("FerretDB's SQLite backend serves {_id} alone: the lease fences, not the documents")
    await old_leader.write(WriteBatch(runs=[run("r1", state=S.DONE)]), term=3)
    await new_leader.get_run("r1")
    lost = run("r1", state=S.LOST)
    await new_leader.write(WriteBatch(runs=[lost]), term=4)
    await new_leader.behind.flush()
    with pytest.raises(StaleTerm):
        await old_leader.behind.flush()
    stored = await new_leader.db.runs.find_one({"_id": "r1"})
    assert stored is not None and stored["state"] == "lost"
    assert await old_leader.get_run("r1") == lost


async def test_a_deposed_leaders_late_records_page_goes_under_the_newer_terms(
    two_stores: list[MongoStore],
) -> None:
    """A page of an older term sorts below every page of a newer one: on both backends."""
    old_leader, new_leader = two_stores
    await old_leader.write(WriteBatch(records=[record("p1", revision=1)]), term=3)
    await new_leader.load_records()
    lost = record("p1", state=S.LOST, revision=2)
    await new_leader.write(WriteBatch(records=[lost]), term=4)
    await new_leader.behind.flush()
    await old_leader.behind.flush()  # late: after the newer term's page
    assert await old_leader.db.record_pages.count_documents({}) == 2
    for reader in two_stores:
        assert list((await reader.pages.load(record_from_doc)).values()) == [lost]
        assert await reader.load_records() == [lost]


async def test_what_the_log_holds_is_read_before_it_is_written_behind_and_after(
    backend_target: MongoTarget, two_stores: list[MongoStore]
) -> None:
    """Only a leader reads (``Reads`` requires it): from what it wrote or, once it took over, replayed."""
    store, successor = two_stores
    term = await take_over(store, "a")
    launched = run("r1", state=S.SCHEDULED, idempotency_key="k1")
    running = record("p1", state=S.SCHEDULED, run_id="r1", revision=1)
    journaled = [JournalEntry(1, "s1", "p1", running), JournalEntry(2, "s1", "p2", None)]
    await store.write(
        WriteBatch(records=[running, record("p2")], runs=[launched], journal=journaled[:1]), term
    )
    await store.write(WriteBatch(removed=[("s1", "p2")], journal=journaled[1:]), term)
    assert await store.db.runs.count_documents({}) == 0  # not written behind yet
    assert await store.db.journal.count_documents({}) == 0
    assert await store.journal_since(0, -1) == journaled
    assert await store.journal_since(1, 1) == journaled[1:]
    assert await store.get_run("r1") == launched
    assert await store.find_run_by_idempotency_key("k1") == launched
    assert await store.list_runs("s1", "p1", 10) == await store.list_runs("s1", "", 10) == [launched]
    assert await store.load_active_runs() == [launched]
    assert await store.load_records() == [running]
    await store.behind.flush()
    assert await store.db.log.count_documents({}) == 0  # pruned once written behind
    assert await store.db.runs.count_documents({}) == await store.db.keys.count_documents({}) == 1
    assert await store.list_runs("s1", "", 10) == [launched]
    assert await store.load_records() == [running]
    assert await store.db.journal.count_documents({}) == 1  # one page: the round's entries
    assert await store.journal_since(0, -1) == journaled
    assert await store.journal_since(1, 1) == journaled[1:]

    # The leader ends the run, and is killed before it writes that behind.
    ended = replace(launched, state=S.DONE)
    done = replace(running, state=S.DONE, revision=3)
    await store.write(
        WriteBatch(records=[done], runs=[ended], journal=[JournalEntry(3, "s1", "p1", done)]), term
    )
    store._behind = None  # nothing more is written behind
    await store.release_lease("a")
    await take_over(successor, "b")
    assert await successor.load_active_runs() == []
    assert [r.state for r in await successor.load_records()] == [S.DONE]
    assert await successor.get_run("r1") == ended
    assert await successor.list_runs("s1", "p1", 10) == [ended]
    assert await successor.journal_since(2, -1) == [JournalEntry(3, "s1", "p1", done)]
    await successor.behind.flush()  # the successor writes it behind, as its own
    doc = await successor.db.runs.find_one({"_id": "r1"})
    assert doc is not None and doc["state"] == "done"


async def test_a_take_overs_loads_share_one_replay_of_the_log(two_stores: list[MongoStore]) -> None:
    """Its records and its active runs are loaded at once: the log is read and decoded once for
    both, and again only once the store has written (or a read of it failed)."""
    store, successor = two_stores
    term = await take_over(store, "a")
    launched = run("r1", state=S.RUNNING, created_at=datetime.now(UTC).replace(microsecond=0))
    running = record("p1", state=S.RUNNING, run_id="r1", revision=1)
    await store.write(WriteBatch(records=[running], runs=[launched]), term)
    await store.release_lease("a")
    replays: list[int] = []
    replay = successor._commit_log.replay

    async def counted(after: int) -> Any:
        replays.append(after)
        if len(replays) == 1:
            raise ConnectionError("the server went away")  # a failed read is not kept
        return await replay(after)

    successor._commit_log.replay = counted  # type: ignore[method-assign]
    new_term = await take_over(successor, "b")
    with pytest.raises(ConnectionError):
        await successor.load_records()
    records, runs = await asyncio.gather(successor.load_records(), successor.load_active_runs())
    assert (records, runs, len(replays)) == ([running], [launched], 2)
    await successor.write(WriteBatch(runs=[replace(launched, state=S.DONE)]), new_term)
    assert await successor.load_active_runs() == [] and len(replays) == 3  # the log moved on


async def test_a_run_active_at_a_write_behind_is_written_once_it_ended(two_stores: list[MongoStore]) -> None:
    """Held back, and the log kept from its version on: one insert when it ends, no update."""
    store, standby = two_stores
    term = await take_over(store, "a")
    launched = run("r1", state=S.RUNNING, created_at=datetime.now(UTC).replace(microsecond=0))
    await store.write(WriteBatch(records=[record("p1", revision=1)], runs=[launched]), term)
    await store.write(WriteBatch(records=[record("p2", revision=2)]), term)
    await store.behind.flush()
    assert await store.db.runs.count_documents({}) == 0  # held back
    assert len(await store.pages.load(record_from_doc)) == 2  # the rest is written
    assert await store.db.log.count_documents({}) == 2  # from the run's version on
    assert await store.get_run("r1") == launched
    assert await standby.load_active_runs() == [launched]  # a new leader would find it in the log

    ended = replace(launched, state=S.DONE)
    await store.write(WriteBatch(runs=[ended]), term)
    await store.behind.flush()
    assert await store.db.log.count_documents({}) == 0
    doc = await store.db.runs.find_one({"_id": "r1"})
    assert doc is not None and doc["state"] == "done" and "active" not in doc
    assert await standby.get_run("r1") == ended


async def test_a_queued_run_is_held_for_seconds_but_not_past_the_newest_slots_of_the_log(
    two_stores: list[MongoStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run queued for 10 s is still held (a queue under load is what keeps runs waiting longest);
    once its version is further back than ``HOLD_MOST_SLOTS`` slots it is written, so that a
    take-over never replays more than those."""
    monkeypatch.setattr(mongo_behind, "HOLD_MOST_SLOTS", 3)
    store, standby = two_stores
    term = await take_over(store, "a")
    queued = run("r1", created_at=datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10))
    await store.write(WriteBatch(records=[record("p1", run_id="r1", revision=1)], runs=[queued]), term)
    await store.write(WriteBatch(records=[record("p2", revision=2)]), term)
    await store.behind.flush()
    assert await store.db.runs.count_documents({}) == 0  # held: 10 s in the queue, 2 slots back
    assert await store.db.log.count_documents({}) == 2
    for revision in (3, 4):
        await store.write(WriteBatch(records=[record("p2", revision=revision)]), term)
    await store.behind.flush()  # its slot is 4 back now: written as it is, and the log pruned
    doc = await store.db.runs.find_one({"_id": "r1"})
    assert doc is not None and doc["state"] == "scheduled"
    assert await store.db.log.count_documents({}) == 0
    assert await standby.load_active_runs() == [queued]


async def test_the_record_of_a_held_back_run_waits_with_it(two_stores: list[MongoStore]) -> None:
    """Its newest version is that run's: written once, when the run has ended, not once more before."""
    store, standby = two_stores
    term = await take_over(store, "a")
    launched = run("r1", state=S.RUNNING, created_at=datetime.now(UTC).replace(microsecond=0))
    running = record("p1", state=S.RUNNING, run_id="r1", revision=1)
    other = record("p2", state=S.DONE, run_id="r0", revision=2)  # its run is not in the batch
    await store.write(WriteBatch(records=[running, other], runs=[launched]), term)
    await store.behind.flush()
    assert list((await store.pages.load(record_from_doc)).values()) == [other]  # p1 held back
    assert sorted(await standby.load_records(), key=lambda r: r.revision) == [running, other]

    done = replace(running, state=S.DONE, revision=3)
    await store.write(WriteBatch(records=[done], runs=[replace(launched, state=S.DONE)]), term)
    await store.behind.flush()
    assert await store.db.log.count_documents({}) == 0  # all written: nothing held
    assert (await store.pages.load(record_from_doc))[record_id("s1", "p1")] == done
    assert await store.db.record_pages.count_documents({}) == 2  # one a round, p1's in the second


async def test_an_entry_is_stored_compressed_and_the_earlier_forms_replay_the_same(
    two_stores: list[MongoStore],
) -> None:
    """An entry's body is zlib-compressed BSON (``zbody``); an entry written by an earlier build,
    its body uncompressed (``body``) or its documents in the open, is replayed as it was."""
    store, successor = two_stores
    term = await take_over(store, "a")
    records = [record(f"p{n}", state=S.DONE, revision=n + 1) for n in range(20)]
    journal = [JournalEntry(r.revision, "s1", r.process_id, r) for r in records]
    journal.append(JournalEntry(30, "s1", "p0", replace(records[0], revision=30)))  # not the batch's
    await store.write(WriteBatch(records=records, journal=journal), term)
    stored = await store.db.log.find_one({})
    assert stored is not None and set(stored) == {"_id", "term", "writer", "zbody"}
    body = bson.decode(zlib.decompress(bytes(stored["zbody"])))
    assert len(stored["zbody"]) * 4 < len(bson.encode(body))  # 20 records repeat each other's fields
    # An entry's record that the body holds already is not held twice.
    assert [doc.get("same", False) for doc in body["journal"]] == [True] * 20 + [False]
    assert body["journal"][-1]["record"]["revision"] == 30
    older = [record(f"q{n}", revision=100 + n) for n in range(2)]
    header = {"term": term, "writer": "an earlier build"}
    earlier_body = {"records": [record_doc(older[0], term)]}
    await store.db.log.insert_many(
        [
            {"_id": stored["_id"] + 1, **header, "body": bson.Binary(bson.encode(earlier_body))},
            {"_id": stored["_id"] + 2, **header, "records": [record_doc(older[1], term)]},
        ]
    )
    store._behind = None  # nothing is written behind: the successor reads the log alone
    await store.release_lease("a")
    await take_over(successor, "b")
    loaded = sorted(await successor.load_records(), key=lambda r: r.revision)
    assert loaded == records + older
    assert await successor.journal_since(0, -1) == journal
