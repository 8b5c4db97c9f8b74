"""The store contract, run against every store: the embedded one (SQLite) and MongoDB.

MongoDB is the session's server (FerretDB on PostgreSQL, or ``MONGODB_URI``)
and, as ``mongo-sqlite``, a FerretDB on its SQLite backend: the two FerretDB
backends push different filters down, and the store must be right on both.

Times carry whole milliseconds: MongoDB stores dates with millisecond precision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from shards.models import ProcessRecord, Progress, RetryPolicy, Run, WorkerInfo
from shards.states import ACTIVE_STATES, ProcessState
from shards_controller.store import EmbeddedStore, JournalEntry, Lease, Store, WriteBatch
from shards_controller.takeover import REVISION_GAP
from tests.support.mongo import MongoTarget
from tests.support.waiting import assert_eventually_async

T0 = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
LONG = timedelta(seconds=30)
SHORT = timedelta(milliseconds=200)

T = TypeVar("T")
OpenStore = Callable[[], Coroutine[Any, Any, Store]]


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("mongo", marks=pytest.mark.mongo),
        pytest.param("mongo-sqlite", marks=pytest.mark.mongo),
    ]
)
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, aio_runner: asyncio.Runner
) -> Iterator[OpenStore]:
    """Opens handles on one fresh store: each is what one controller would hold."""
    if request.param == "embedded":
        path = tmp_path / "store.db"

        def make() -> Store:
            return EmbeddedStore(path)
    else:
        fixture = "fresh_mongo" if request.param == "mongo" else "fresh_mongo_sqlite"
        target: MongoTarget = request.getfixturevalue(fixture)
        make = target.store
    opened: list[Store] = []

    async def open_one() -> Store:
        store = make()
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        aio_runner.run(store.close())


@pytest.fixture
def store(open_store: OpenStore, aio_runner: asyncio.Runner) -> Store:
    return aio_runner.run(open_store())


def record(process_id: str = "p1", scope_id: str = "s1", **fields: object) -> ProcessRecord:
    return ProcessRecord(scope_id=scope_id, process_id=process_id, **fields)  # type: ignore[arg-type]


def run(run_id: str, process_id: str = "p1", scope_id: str = "s1", **fields: object) -> Run:
    fields.setdefault("created_at", T0)
    return Run(run_id=run_id, scope_id=scope_id, process_id=process_id, **fields)  # type: ignore[arg-type]


def by_key(records: list[ProcessRecord]) -> dict[tuple[str, str], ProcessRecord]:
    return {r.key: r for r in records}


async def eventually(condition: Callable[[], Awaitable[T | None]], timeout_s: float = 5.0) -> T:
    """``assert_eventually_async`` for a coroutine function, typed."""
    return cast(T, await assert_eventually_async(cast(Callable[[], Any], condition), timeout_s))


async def take_over(store: Store, holder_id: str) -> Lease:
    """Poll until ``holder_id`` gets the lease (the current one has a short TTL)."""
    lease: Lease = await eventually(lambda: store.acquire_lease(holder_id, f"{holder_id}:1", LONG))
    assert lease.holder_id == holder_id
    return lease


# -- open


async def test_open_is_idempotent(store: Store) -> None:
    await store.open()
    await store.write(WriteBatch(records=[record()]), term=1)
    assert await store.load_records() == [record()]


async def test_empty_store(store: Store) -> None:
    assert await store.load_records() == []
    assert await store.load_active_runs() == []
    assert await store.load_workers() == []
    assert await store.read_lease() is None
    assert await store.max_revision() == 0
    assert await store.journal_since(0, 10) == []


# -- records


async def test_records_round_trip_every_field(store: Store) -> None:
    full = record(
        name="Import orders",
        detail_level=2,
        warning="slow",
        special=True,
        state=ProcessState.RUNNING,
        error="last attempt failed",
        progress=Progress("half way", 0.5),
        running_since=T0,
        done_at=T0 + timedelta(seconds=1),
        stopped_at=T0 + timedelta(seconds=2),
        failed_at=T0 + timedelta(seconds=3),
        duration=timedelta(seconds=12, milliseconds=500),
        run_id="r1",
        parent_run_id="r0",
        worker_id="w1",
        revision=7,
    )
    plain = record("p2")
    odd = record('odd/"id"\\[', scope_id='s,"1"')  # keys that could break a naive composite key
    other_scope = record("p1", scope_id="s2", revision=3)
    await store.write(WriteBatch(records=[full, plain, odd, other_scope]), term=1)

    loaded = by_key(await store.load_records())
    assert loaded == {r.key: r for r in (full, plain, odd, other_scope)}
    assert loaded[full.key].running_since == T0
    assert loaded[full.key].duration == timedelta(seconds=12.5)


async def test_records_replace_and_remove(store: Store) -> None:
    first = record("p1", state=ProcessState.RUNNING, revision=1, progress=Progress("started", 0.1))
    await store.write(WriteBatch(records=[first, record("p2"), record("p3")]), term=1)

    done = record("p1", state=ProcessState.DONE, revision=2, done_at=T0)  # a whole new document
    await store.write(WriteBatch(records=[done], removed=[("s1", "p2"), ("s1", "missing")]), term=1)

    assert by_key(await store.load_records()) == {done.key: done, ("s1", "p3"): record("p3")}


# -- runs


async def test_runs_upsert_and_get(store: Store) -> None:
    full = run(
        "r1",
        state=ProcessState.RUNNING,
        error="",
        progress=Progress("a third", 0.33),
        worker_id="w1",
        parent_run_id="r0",
        idempotency_key="key-1",
        started_at=T0 + timedelta(seconds=1),
        log_tail=("line 1", "line 2"),
    )
    await store.write(WriteBatch(runs=[full, run("r2", "p2")]), term=1)
    assert await store.get_run("r1") == full
    assert await store.get_run("r2") == run("r2", "p2")
    assert await store.get_run("missing") is None

    ended = replace(full, state=ProcessState.FAILED, error="boom", ended_at=T0 + timedelta(seconds=9))
    await store.write(WriteBatch(runs=[ended]), term=1)
    assert await store.get_run("r1") == ended


async def test_list_runs_newest_first_per_process_and_per_scope(store: Store) -> None:
    def at(run_id: str, process_id: str, seconds: int, scope_id: str = "s1") -> Run:
        return run(run_id, process_id, scope_id, created_at=T0 + timedelta(seconds=seconds))

    runs = [
        at("a1", "a", 1),
        at("b2", "b", 2),
        at("a3", "a", 3),
        at("b4", "b", 4),
        at("a5", "a", 5),
        at("x6", "a", 6, scope_id="s2"),
    ]
    await store.write(WriteBatch(runs=runs[::2]), term=1)  # out of order, in two batches
    await store.write(WriteBatch(runs=runs[1::2]), term=1)

    def ids(listed: list[Run]) -> list[str]:
        return [r.run_id for r in listed]

    assert ids(await store.list_runs("s1", "a", 10)) == ["a5", "a3", "a1"]
    assert ids(await store.list_runs("s1", "a", 2)) == ["a5", "a3"]
    assert ids(await store.list_runs("s1", "b", 10)) == ["b4", "b2"]
    assert ids(await store.list_runs("s1", "", 10)) == ["a5", "b4", "a3", "b2", "a1"]
    assert ids(await store.list_runs("s1", "", 3)) == ["a5", "b4", "a3"]
    assert ids(await store.list_runs("s2", "", 10)) == ["x6"]
    assert ids(await store.list_runs("s2", "b", 10)) == []
    assert ids(await store.list_runs("nowhere", "", 10)) == []
    assert (await store.list_runs("s1", "a", 1))[0] == runs[4]


async def test_list_runs_pages_after_a_run_id_newest_first_ties_by_run_id(store: Store) -> None:
    same = T0 + timedelta(seconds=7)
    runs = [run(f"r{n}", "a" if n % 2 else "b", "s1", created_at=same) for n in range(5)]
    runs += [run("old", "a", "s1", created_at=T0), run("new", "a", "s1", created_at=T0 + timedelta(hours=1))]
    await store.write(WriteBatch(runs=runs), term=1)

    async def pages(process_id: str, size: int) -> list[list[str]]:
        listed: list[list[str]] = []
        after = ""
        while True:
            page = [r.run_id for r in await store.list_runs("s1", process_id, size, after)]
            if not page:
                return listed
            listed.append(page)
            after = page[-1]

    assert await pages("", 2) == [["new", "r4"], ["r3", "r2"], ["r1", "r0"], ["old"]]
    assert await pages("a", 2) == [["new", "r3"], ["r1", "old"]]
    assert await store.list_runs("s1", "", 10, "no-such-run") == []
    assert await store.list_runs("s1", "", 10, "old") == []


async def test_load_active_runs_returns_only_active_states(store: Store) -> None:
    runs = [run(f"r-{state.value}", f"p-{state.value}", state=state) for state in ProcessState]
    await store.write(WriteBatch(runs=runs), term=1)

    active = await store.load_active_runs()
    assert {r.run_id for r in active} == {f"r-{state.value}" for state in ACTIVE_STATES}
    assert {r.run_id: r for r in active}["r-running"] == runs[list(ProcessState).index(ProcessState.RUNNING)]

    await store.write(WriteBatch(runs=[run("r-running", "p-running", state=ProcessState.DONE)]), term=1)
    assert "r-running" not in {r.run_id for r in await store.load_active_runs()}


async def test_find_run_by_idempotency_key(store: Store) -> None:
    keyed = run("r1", idempotency_key="k1")
    other = run("r4", "p2", idempotency_key="k2")
    # Runs without a key never collide with each other.
    await store.write(WriteBatch(runs=[keyed, run("r2"), run("r3"), other]), term=1)

    assert await store.find_run_by_idempotency_key("k1") == keyed
    assert await store.find_run_by_idempotency_key("k2") == other
    assert await store.find_run_by_idempotency_key("nope") is None
    assert await store.find_run_by_idempotency_key("") is None
    no_key = await store.get_run("r3")
    assert no_key is not None
    assert no_key.idempotency_key == ""


# -- journal


def entry(revision: int, process_id: str = "p1", removed: bool = False) -> JournalEntry:
    rec = None if removed else record(process_id, revision=revision, state=ProcessState.SCHEDULED)
    return JournalEntry(revision=revision, scope_id="s1", process_id=process_id, record=rec)


async def test_journal_since_in_revision_order(store: Store) -> None:
    entries = [entry(1), entry(2, "p2"), entry(3, "p2", removed=True), entry(4), entry(5, "p3")]
    await store.write(WriteBatch(journal=entries[3:]), term=1)
    await store.write(WriteBatch(journal=entries[:3]), term=1)

    assert await store.journal_since(0, 100) == entries
    assert await store.journal_since(2, 2) == entries[2:4]
    assert await store.journal_since(4, 100) == [entries[4]]
    assert await store.journal_since(5, 100) == []
    assert (await store.journal_since(2, 1))[0].record is None


async def covers(store: Store, highest: int) -> bool:
    """``max_revision`` is at or above every revision written (a store may answer a ceiling it
    reserved above them), and below where a take-over numbers from."""
    return highest <= await store.max_revision() < highest + REVISION_GAP


async def test_max_revision_covers_records_and_journal(store: Store) -> None:
    await store.write(WriteBatch(journal=[entry(1), entry(2), entry(3)]), term=1)
    assert await covers(store, 3)
    await store.write(WriteBatch(records=[record("p1", revision=9), record("p2", revision=4)]), term=1)
    assert await covers(store, 9)
    await store.write(WriteBatch(journal=[entry(12)]), term=1)
    assert await covers(store, 12)
    far = entry(12 + 3 * REVISION_GAP)  # far past any ceiling reserved so far
    await store.write(WriteBatch(journal=[far]), term=1)
    assert await covers(store, far.revision)


async def test_the_journal_floor_says_from_where_a_resume_is_exact(store: Store) -> None:
    assert await store.journal_floor() == 0
    await store.write(WriteBatch(journal=[entry(n) for n in range(1, 7)]), term=1)
    assert await store.journal_floor() == 0  # nothing pruned: every entry is there
    await store.prune_journal(keep_last=2)
    floor = await store.journal_floor()
    assert floor == 4  # every entry above it is stored, and none at or below it
    assert [e.revision for e in await store.journal_since(floor, 100)] == [5, 6]
    await store.write(WriteBatch(journal=[entry(7)]), term=1)
    assert await store.journal_floor() == 4  # writing does not move it; pruning does


async def test_prune_journal_keeps_the_newest(store: Store) -> None:
    await store.write(WriteBatch(journal=[entry(n) for n in range(1, 7)]), term=1)

    await store.prune_journal(keep_last=10)  # fewer than that: nothing goes
    assert [e.revision for e in await store.journal_since(0, 100)] == [1, 2, 3, 4, 5, 6]

    await store.prune_journal(keep_last=2)
    assert [e.revision for e in await store.journal_since(0, 100)] == [5, 6]
    assert await covers(store, 6)

    await store.prune_journal(keep_last=0)
    assert await store.journal_since(0, 100) == []


# -- workers


async def test_workers_save_load_delete(store: Store) -> None:
    w1 = WorkerInfo(
        "w1", "127.0.0.1:7001", capacity=4, scopes=("s1", "s2"), registered_at=T0, last_heartbeat_at=T0
    )
    w2 = WorkerInfo("w2", "127.0.0.1:7002")
    await store.save_worker(w1, term=1)
    await store.save_worker(w2, term=1)

    loaded = {w.worker_id: w for w in await store.load_workers()}
    # Liveness is the controller's judgement: never stored, always False on load.
    assert loaded == {"w1": replace(w1, alive=False), "w2": replace(w2, alive=False)}

    moved = replace(w1, address="127.0.0.1:7101", capacity=8, last_heartbeat_at=T0 + timedelta(seconds=5))
    await store.save_worker(moved, term=1)
    await store.delete_worker("w2", term=1)
    await store.delete_worker("never-registered", term=1)
    assert await store.load_workers() == [replace(moved, alive=False)]


# -- run control (issue 15): what a new leader needs to hold deadlines, retries and overdue stops


async def test_run_control_fields_round_trip(store: Store) -> None:
    policy = RetryPolicy(
        max_attempts=5, backoff_s=0.5, backoff_multiplier=3.0, max_backoff_s=30.0, on=(ProcessState.LOST,)
    )
    planned = record(
        state=ProcessState.FAILED,
        timeout_s=12.5,
        retry=policy,
        attempt=2,
        next_attempt_at=T0 + timedelta(seconds=4),
        stop_overdue_since=T0 + timedelta(seconds=1),
        revision=3,
    )
    await store.write(WriteBatch(records=[planned]), term=1)
    assert await store.load_records() == [planned]
    timed = run(
        "r1",
        state=ProcessState.STOP_REQUESTED,
        worker_id="w1",
        started_at=T0,
        timeout_s=2.0,
        deadline=T0 + timedelta(seconds=2),
        timed_out=True,
        attempt=3,
        stop_overdue_since=T0 + timedelta(seconds=3),
    )
    await store.write(WriteBatch(runs=[timed]), term=1)
    assert await store.get_run("r1") == timed
    assert await store.load_active_runs() == [timed]
    # A record and a run without any of them read back so.
    await store.write(WriteBatch(records=[record("p2")], runs=[run("r2", "p2")]), term=1)
    plain = by_key(await store.load_records())[("s1", "p2")]
    assert (plain.retry, plain.attempt, plain.next_attempt_at, plain.timeout_s) == (None, 0, None, None)
    stored = await store.get_run("r2")
    assert stored is not None and (stored.attempt, stored.deadline, stored.timed_out) == (1, None, False)
