"""The MongoDB store's records as pages, folded into a snapshot of chunks (``store.mongo_pages``):
what a load reads before and after a compaction, what a compaction keeps and rewrites, the first
snapshot made of an earlier version's record documents, and the swap a compaction must win; and
the journal's pages (``store.mongo_journal``), read with the entries an earlier version wrote.

On FerretDB/PostgreSQL and FerretDB/SQLite (``backend_target``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from shards.models import ProcessRecord
from shards.states import ProcessState
from shards_controller.store import JournalEntry, WriteBatch, mongo_journal, mongo_pages
from shards_controller.store.documents import record_from_doc
from shards_controller.store.mongo import MongoStore
from shards_controller.store.mongo_commands import journal_doc, record_doc
from shards_controller.store.mongo_journal import HEAD_ID
from shards_controller.store.mongo_pages import CHUNKS, PAGES, Snapshot
from tests.support.mongo import MongoTarget
from tests.support.mongo_stores import record, take_over
from tests.support.waiting import assert_eventually_async

pytestmark = pytest.mark.mongo
S = ProcessState


def by_process(records: list[ProcessRecord]) -> dict[str, ProcessRecord]:
    return {r.process_id: r for r in records}


async def stored(store: MongoStore) -> dict[str, ProcessRecord]:
    """What the snapshot and the pages hold (the log left out)."""
    return by_process(list((await store.pages.load(record_from_doc)).values()))


async def test_a_compaction_folds_the_pages_and_rewrites_only_the_chunks_they_touch(
    two_stores: list[MongoStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_pages, "CHUNK_RECORDS", 3)
    store, standby = two_stores
    term = await take_over(store, "a")
    first = [record(f"p{n}", revision=n + 1) for n in range(7)]
    await store.write(WriteBatch(records=first), term)
    await store.behind.flush()
    assert await store.pages.compact(term)
    snapshot = await store.pages.snapshot()
    assert snapshot is not None and len(snapshot.chunks) == 3  # 3 + 3 + 1
    assert await store.db[PAGES].count_documents({}) == 0
    assert await stored(store) == by_process(first)

    # p1 changes, p5 goes, p9 is new: the chunk of p0-p2 and the one of p3-p5 are rewritten.
    changed = replace(first[1], state=S.DONE, revision=10)
    await store.write(WriteBatch(records=[changed, record("p9", revision=11)], removed=[("s1", "p5")]), term)
    await store.behind.flush()
    expected = {**by_process(first), "p1": changed, "p9": record("p9", revision=11)}
    del expected["p5"]
    assert await stored(store) == expected  # the page over the snapshot
    assert await store.pages.compact(term)
    after = await store.pages.snapshot()
    assert after is not None and after.covers > snapshot.covers
    kept = set(after.chunks) & set(snapshot.chunks)
    assert len(kept) == 1  # p6's chunk, untouched
    assert await store.db[CHUNKS].count_documents({}) == len(after.chunks) == 4  # 1 kept, 2 rewritten, p9's
    assert await store.db[PAGES].count_documents({}) == 0
    assert await stored(store) == expected
    assert by_process(await standby.load_records()) == expected
    assert not await store.pages.compact(term)  # nothing to fold


async def test_a_compaction_folds_the_oldest_pages_a_bounded_number_of_versions_at_a_time(
    two_stores: list[MongoStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_pages, "PAGE_RECORDS", 2)
    monkeypatch.setattr(mongo_pages, "COMPACT_AT", 2)
    store, standby = two_stores
    term = await take_over(store, "a")
    defined = [record(f"p{n}", revision=n + 1) for n in range(5)]
    await store.write(WriteBatch(records=defined), term)
    await store.behind.flush()
    assert await store.db[PAGES].count_documents({}) == 3  # 2 + 2 + 1
    for left in (2, 1, 0):
        assert await store.pages.compact(term)
        assert await store.db[PAGES].count_documents({}) == left
        assert await stored(store) == by_process(defined)
    assert by_process(await standby.load_records()) == by_process(defined)
    assert not await store.pages.compact(term)


async def test_the_first_snapshot_takes_the_record_documents_an_earlier_version_wrote(
    two_stores: list[MongoStore],
) -> None:
    store, standby = two_stores
    term = await take_over(store, "a")
    earlier = [record(f"p{n}", revision=n + 1) for n in range(3)]
    await store.db.records.insert_many([record_doc(r, 1) for r in earlier])
    assert by_process(await standby.load_records()) == by_process(earlier)
    changed = replace(earlier[0], state=S.FAILED, revision=5)
    await store.write(WriteBatch(records=[changed], removed=[("s1", "p2")]), term)
    await store.behind.flush()
    expected = {"p0": changed, "p1": earlier[1]}
    assert await stored(store) == expected
    assert await store.pages.compact(term)
    assert await store.db.records.count_documents({"_id": {"$nin": [HEAD_ID, mongo_pages.SNAPSHOT_ID]}}) == 0
    assert await stored(store) == expected
    assert by_process(await standby.load_records()) == expected


async def test_a_swap_from_a_snapshot_that_was_replaced_is_refused(two_stores: list[MongoStore]) -> None:
    """Two compactions from one snapshot (a deposed leader's, late): the second swap loses, and
    the snapshot stays the first one's."""
    store, deposed = two_stores
    term = await take_over(store, "a")
    await store.write(WriteBatch(records=[record("p1", revision=1)]), term)
    await store.behind.flush()
    assert await store.pages.compact(term)
    read_by_both = await store.pages.snapshot()
    await store.write(WriteBatch(records=[record("p2", revision=2)]), term)
    await store.behind.flush()
    assert await store.pages.compact(term)
    current = await store.pages.snapshot()
    assert current is not None and current != read_by_both
    stale = Snapshot("000000000000.000000000000.000000009", ())
    assert not await deposed.pages._swap(term, read_by_both, stale)
    assert not await deposed.pages._swap(term, None, stale)  # nor may a first one replace it
    assert await store.pages.snapshot() == current
    assert set(await stored(store)) == {"p1", "p2"}


async def test_the_write_behind_compacts_once_the_pages_hold_enough(
    backend_target: MongoTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_pages, "COMPACT_AT", 4)
    store = backend_target.store(write_behind_s=0.05)
    await store.open()
    try:
        term = await take_over(store, "a")
        for n in range(5):
            await store.write(WriteBatch(records=[record(f"p{n}", revision=n + 1)]), term)

        async def compacted() -> Snapshot:
            snapshot = await store.pages.snapshot()
            assert snapshot is not None
            return snapshot

        snapshot: Snapshot = await assert_eventually_async(compacted, timeout_s=10)
        assert await store.db[CHUNKS].count_documents({}) == len(snapshot.chunks) == 1
        assert set(await stored(store)) == {f"p{n}" for n in range(5)}
    finally:
        await store.close()


async def test_the_journal_reads_its_pages_and_an_earlier_versions_entries_alike(
    two_stores: list[MongoStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_journal, "PAGE_ENTRIES", 2)
    store, reader = two_stores
    term = await take_over(store, "a")
    entries = [JournalEntry(n, "s1", f"p{n}", record(f"p{n}", revision=n)) for n in range(1, 8)]
    await store.db.journal.insert_many([journal_doc(entry, 1) for entry in entries[:2]])  # earlier
    for entry in entries[2:]:
        await store.write(WriteBatch(records=[entry.record], journal=[entry]), term)  # type: ignore[list-item]
    await store.behind.flush()
    assert await store.db.journal.count_documents({}) == 2 + 3  # 2 entries, pages of 2 + 2 + 1
    for since in range(8):
        assert await reader.journal_since(since, -1) == entries[since:]
        assert await reader.journal_since(since, 2) == entries[since : since + 2]
    await store.prune_journal(keep_last=4)  # the floor is 3: the page of 3-4 stays, 3 unread
    assert await store.db.journal.count_documents({}) == 3
    assert await reader.journal_since(0, -1) == entries[3:]
    assert await reader.journal_floor() == 3
    assert await reader.max_revision() >= 7
