"""What the MongoDB store does beyond the contract: its fences, its keys, its indexes, its repairs
(its commit log and write-behind: ``test_mongo_log``).

On the session's server (FerretDB on PostgreSQL by default) and, where the
backends differ, on FerretDB's SQLite backend too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shards.models import ProcessInfo, WorkerInfo
from shards.states import ProcessState
from shards_controller.launch import LaunchRequest
from shards_controller.store import JournalEntry, StaleTerm, WriteBatch
from shards_controller.store.mongo import MongoStore
from shards_controller.store.mongo_commands import key_doc, record_doc, record_id, run_doc
from shards_controller.store.mongo_journal import HEAD_ID, HEAD_RESERVE
from shards_controller.store.mongo_schema import INDEXES, is_ferretdb
from tests.support.leading import leading_controller
from tests.support.mongo import MongoTarget
from tests.support.mongo_stores import LONG, SHORT, T0, S, record, run, take_over

pytestmark = pytest.mark.mongo


# -- fencing


async def test_a_deposed_leaders_write_is_refused_before_it_is_sent(two_stores: list[MongoStore]) -> None:
    """A leader paused past its lease (SIGSTOP) finds it lapsed, reads the lease, writes nothing."""
    old_leader, new_leader = two_stores
    old = await old_leader.acquire_lease("a", "a:1", SHORT)
    assert old is not None
    new = await take_over(new_leader, "b")
    untouched = record("p9", revision=1)  # a document the new leader never writes
    with pytest.raises(StaleTerm):
        await old_leader.write(WriteBatch(records=[untouched], runs=[run("r9")]), old.term)
    with pytest.raises(StaleTerm):
        await old_leader.save_worker(WorkerInfo("w9", "old:1"), old.term)
    assert await new_leader.load_records() == []
    assert await new_leader.get_run("r9") is None
    assert await new_leader.load_workers() == []
    await new_leader.write(WriteBatch(records=[untouched]), new)
    assert await new_leader.load_records() == [untouched]


class _SlowAcknowledgement(MongoStore):
    """A store whose lease lapses while its write is on the wire: trusted before it, not after."""

    def __init__(self, uri: str, database: str) -> None:
        super().__init__(uri, database)
        self.calls = 0

    def _trusted(self, term: int) -> bool:
        self.calls += 1
        return self.calls % 2 == 1


async def test_a_write_acknowledged_after_a_take_over_is_refused_and_overwrites_nothing_newer(
    backend_target: MongoTarget, two_stores: list[MongoStore]
) -> None:
    new_leader = two_stores[1]
    old_leader = _SlowAcknowledgement(backend_target.uri, backend_target.database)
    await old_leader.open()
    try:
        old = await old_leader.acquire_lease("a", "a:1", SHORT)
        assert old is not None
        await old_leader.write(WriteBatch(records=[record("p1", revision=1)]), old.term)
        new = await take_over(new_leader, "b")
        lost = record("p1", state=S.LOST, revision=3)
        await new_leader.write(WriteBatch(records=[lost]), new)

        # Trusted when sent, so nothing is checked first; the acknowledgement comes too late.
        with pytest.raises(StaleTerm):
            await old_leader.write(WriteBatch(records=[record("p2", revision=2)]), old.term)
        if new_leader.term_in_filters:
            with pytest.raises(StaleTerm):
                await old_leader.write(WriteBatch(records=[record("p1", state=S.DONE, revision=4)]), old.term)
            assert {r.process_id: r for r in await new_leader.load_records()}["p1"] == lost
    finally:
        await old_leader.close()


async def test_a_write_within_the_lease_makes_no_extra_round_trip(two_stores: list[MongoStore]) -> None:
    store = two_stores[0]
    lease = await store.acquire_lease("a", "a:1", LONG)
    assert lease is not None

    async def fenced_writes() -> int:
        doc = await store.db.client[store.lease_database].lease.find_one({"_id": "leader"})
        assert doc is not None
        return int(doc.get("fenced_writes", 0))

    for n in range(3):
        await store.write(WriteBatch(records=[record(f"p{n}")], runs=[run(f"r{n}", f"p{n}")]), lease.term)
    assert await fenced_writes() == 0  # acknowledged while the lease held: no fence needed
    renewed = await store.renew_lease("a", "a:1", LONG, lease.term)  # as the leader renews it
    assert renewed is not None
    await store.write(WriteBatch(records=[record("p0")]), lease.term)
    assert await fenced_writes() == 0
    # A term this store did not take the lease for is always checked against it.
    await store.write(WriteBatch(records=[record("p1")]), lease.term + 1)
    assert await fenced_writes() == 1


async def test_a_commit_below_the_heads_ceiling_does_not_write_the_head(two_stores: list[MongoStore]) -> None:
    """The head's revision is a ceiling raised in steps: most commits leave it alone (on
    FerretDB an update is the costliest command), and a new leader still numbers above all."""
    store, newcomer = two_stores
    term = await take_over(store, "a")

    async def head() -> int:
        doc = await store.db.records.find_one({"_id": HEAD_ID})
        return int(doc["revision"]) if doc is not None else 0

    await store.write(WriteBatch(journal=[JournalEntry(1, "s1", "p1", None)]), term)
    ceiling = await head()
    assert ceiling == 1 + HEAD_RESERVE
    for revision in range(2, 12):
        await store.write(WriteBatch(records=[record(revision=revision)]), term)
    assert await head() == ceiling  # ten commits, no write of the head
    beyond = ceiling + 5
    await store.write(WriteBatch(journal=[JournalEntry(beyond, "s1", "p1", None)]), term)
    assert await head() == beyond + HEAD_RESERVE
    assert await newcomer.max_revision() >= beyond


# -- idempotency keys


async def test_a_key_taken_by_a_newer_term_refuses_the_older_terms_launch(
    two_stores: list[MongoStore],
) -> None:
    store = two_stores[0]
    if not store.term_in_filters:
        pytest.skip("FerretDB's SQLite backend serves {_id} alone: the lease fences, not the documents")
    newer = run("r2", idempotency_key="k", state=S.SCHEDULED)
    await store.write(WriteBatch(runs=[newer]), term=2)
    with pytest.raises(StaleTerm):
        await store.write(WriteBatch(runs=[run("r1", idempotency_key="k", state=S.SCHEDULED)]), term=1)
    assert await store.find_run_by_idempotency_key("k") == newer


async def test_a_key_whose_run_is_missing_is_found_by_nobody_and_taken_by_the_next_run(
    two_stores: list[MongoStore],
) -> None:
    store = two_stores[0]
    await store.db.keys.insert_one(key_doc(run("gone", idempotency_key="k"), term=1))  # a torn batch
    assert await store.find_run_by_idempotency_key("k") is None
    retried = run("r2", idempotency_key="k", state=S.SCHEDULED)
    await store.write(WriteBatch(runs=[retried]), term=1)
    assert await store.find_run_by_idempotency_key("k") == retried


async def test_a_duplicate_key_under_concurrent_launches_gives_exactly_one_run(
    backend_target: MongoTarget,
) -> None:
    async with leading_controller(backend_target.store()) as controller:
        # With its definition: no worker is needed to accept it.
        requests = [
            LaunchRequest("s1", "p1", idempotency_key="same", definition=ProcessInfo("p1")) for _ in range(20)
        ]
        outcomes = await asyncio.gather(*(controller.launch(request) for request in requests))
        assert len({outcome.run_id for outcome in outcomes}) == 1
        assert sum(not outcome.deduplicated for outcome in outcomes) == 1
        runs = await controller.store.list_runs("s1", "p1", 10)
        assert [r.run_id for r in runs] == [outcomes[0].run_id]
        found = await controller.store.find_run_by_idempotency_key("same")
        assert found is not None and found.run_id == outcomes[0].run_id


# -- indexes


async def test_the_indexes_are_created_once_on_mongodb_and_not_at_all_on_ferretdb(
    backend_target: MongoTarget,
) -> None:
    """FerretDB 1.24 serves no read from a secondary index (it pushes filters down as ``@>``), so
    there each would only cost writes: none is created, and those of an earlier version go."""
    first, second = backend_target.store(), backend_target.store()
    await first.open()
    try:
        ferretdb = await is_ferretdb(first.db)
        if ferretdb:  # as an earlier version left them
            for collection, indexes in INDEXES.items():
                if indexes:
                    await first.db[collection].create_indexes(indexes)
        await second.open()  # opening again: the same indexes, or none
        runs = {ix["name"]: ix async for ix in await first.db.runs.list_indexes()}
        records = {ix["name"]: ix async for ix in await first.db.records.list_indexes()}
    finally:
        await first.close()
        await second.close()
    if ferretdb:
        assert set(runs) == set(records) == {"_id_"}
        return
    assert list(runs["runs_by_process"]["key"].items()) == [
        ("scope_id", 1),
        ("process_id", 1),
        ("created_ts", -1),
    ]
    assert list(runs["runs_by_scope"]["key"].items()) == [("scope_id", 1), ("created_ts", -1)]
    assert list(runs["runs_active"]["key"].items()) == [("active", 1)]
    assert list(records["records_by_revision"]["key"].items()) == [("revision", -1)]


async def test_controllers_opening_a_new_database_at_once_all_open(backend_target: MongoTarget) -> None:
    stores = [backend_target.store() for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert len({store.term_in_filters for store in stores}) == 1  # each saw the same server
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_on_ferretdb_postgresql_every_hot_lookup_is_an_index_scan(fresh_mongo: MongoTarget) -> None:
    store = fresh_mongo.store()
    await store.open()
    try:
        build = await store.db.client.admin.command("buildInfo")
        if "ferretdbVersion" not in build or not store.term_in_filters:
            pytest.skip("the query plans checked here are PostgreSQL's, under FerretDB")
        await store.write(WriteBatch(records=[record()], runs=[run("r1", idempotency_key="k")]), term=1)
        await store.behind.flush()  # the collections are written behind the log
        lookups = {
            "keys": {"_id": "k"},
            "runs": {"_id": "r1", "term": {"$lte": 1}},
            "records": {"_id": record_id("s1", "p1"), "term": {"$lte": 1}},
        }
        for collection, query in lookups.items():
            explained = await store.db.command(
                "explain", {"find": collection, "filter": query}, verbosity="queryPlanner"
            )
            assert "Index Scan" in str(explained["queryPlanner"]), (collection, explained["queryPlanner"])
    finally:
        await store.close()


# -- torn batches and the take-over's repair


async def test_the_take_over_repairs_what_a_torn_batch_left(backend_target: MongoTarget) -> None:
    """Each collection is written by its own command, so a batch cut short leaves any part of it."""
    seeding = backend_target.store()
    await seeding.open()
    now = datetime.now(UTC)
    running = record("p1", state=S.RUNNING, run_id="r1", worker_id="w1", running_since=T0, revision=5)
    try:
        db = seeding.db
        # A record written, its run not.
        await db.records.insert_one(record_doc(running, 1))
        # A launch's run and key written, its record not.
        orphan = run("r2", "p2", state=S.SCHEDULED, idempotency_key="k2")
        await db.runs.insert_one(run_doc(orphan, 1, now))
        await db.keys.insert_one(key_doc(orphan, 1))
        # A key written, its run not.
        await db.keys.insert_one(key_doc(run("r3", "p3", idempotency_key="k3"), 1))
    finally:
        await seeding.close()

    async with leading_controller(backend_target.store()) as controller:
        rebuilt = await controller.store.get_run("r1")
        assert rebuilt is not None
        assert (rebuilt.state, rebuilt.worker_id, rebuilt.started_at) == (S.RUNNING, "w1", T0)
        stored = {r.process_id: r for r in await controller.store.load_records()}
        assert (stored["p2"].state, stored["p2"].run_id) == (S.SCHEDULED, "r2")
        assert (stored["p1"].state, stored["p1"].run_id) == (S.RUNNING, "r1")
        again = await controller.launch(LaunchRequest("s1", "p2", idempotency_key="k2"))
        assert (again.run_id, again.deduplicated) == ("r2", True)
        fresh = await controller.launch(
            LaunchRequest("s1", "p3", idempotency_key="k3", definition=ProcessInfo("p3"))
        )
        assert not fresh.deduplicated and fresh.run_id != "r3"
        found = await controller.store.find_run_by_idempotency_key("k3")
        assert found is not None and found.run_id == fresh.run_id


# -- FerretDB's connection pool


async def test_a_batch_rewriting_sixty_records_and_runs_goes_through(two_stores: list[MongoStore]) -> None:
    """FerretDB 1.24 held one PostgreSQL connection per statement of an update command until the
    command ended: one batch rewriting 60 stored documents (64 launches in flight) waited for ever
    on its pool of 50, and the server answered nobody again. Statements now go 4 to a command,
    at most 4 commands of the store's at once, however many batches are written together."""
    store = two_stores[0]
    term = await take_over(store, "a")
    ids = [f"p{n}" for n in range(60)]
    await store.write(WriteBatch(records=[record(p, revision=1) for p in ids]), term)
    running = [run(f"r{n}", p, state=ProcessState.RUNNING, worker_id="w1") for n, p in enumerate(ids)]
    await store.write(WriteBatch(runs=running), term)
    rewritten = WriteBatch(
        records=[record(p, state=ProcessState.DONE, revision=2) for p in ids],
        runs=[replace(r, state=ProcessState.DONE) for r in running],
    )
    await asyncio.wait_for(store.write(rewritten, term), 30)
    assert {r.state for r in await store.load_records()} == {ProcessState.DONE}
    # Three such batches at once (a watch, a dismiss and an end, say): still through.
    again = [
        WriteBatch(records=[record(p, state=ProcessState.DONE, revision=3 + n) for p in ids])
        for n in range(3)
    ]
    await asyncio.wait_for(asyncio.gather(*(store.write(batch, term) for batch in again)), 30)
    assert {r.revision for r in await store.load_records()} <= {3, 4, 5}
    assert await store.load_active_runs() == []
    await asyncio.wait_for(store.write(WriteBatch(removed=[("s1", p) for p in ids]), term), 30)
    assert await store.load_records() == []


async def test_the_lease_is_where_every_store_looks_for_it(two_stores: list[MongoStore]) -> None:
    """On FerretDB's SQLite backend in a database of its own (one writer a file), not behind the data."""
    store, other = two_stores
    lease = await store.acquire_lease("a", "a:1", LONG)
    assert lease is not None
    assert await other.read_lease() == lease
    sqlite_backend = await is_ferretdb(store.db) and not store.term_in_filters
    assert store.lease_database == (f"{store.db.name}_lease" if sqlite_backend else store.db.name)
    assert await store.db.client[store.lease_database].lease.count_documents({}) == 1
