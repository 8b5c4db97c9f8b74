"""What a launch's store round trips cost on FerretDB, measured with the store alone.

Until a launch's start is persisted, the MongoDB store (``shards_controller/
store/mongo.py``) makes at most two round trips: the idempotency-key lookup (a
find by ``_id`` in ``keys``; none for a key its client vouches new) and one
group commit (one insert into the commit log of the run, its key, its record
and its journal entry, as one binary). Each is timed here
through ``MongoStore`` itself, holding the lease as a leader does, against a
database preloaded in the store's own document format with ``size`` runs, keys
and journal entries (and 1,000 records), so that the figures can be read by
collection size. Also timed, for reference: each collection's command alone,
the fence (the conditional update of the lease, made only when a write's
acknowledgement comes late), the lookup the store made before (a find on
the runs' ``idempotency_key`` field), which scans on FerretDB, and what the
write-behind makes of 25 launches' records and journal entries: a page each
(``records_page``, ``journal_page``), where it made an update of each record
(``record_upsert``) and an insert of each entry (``journal_insert``).

``python -m bench.ferretdb_floor [--sizes 1000,20000,100000] [--handlers postgresql,sqlite]``
starts its own FerretDB for each backend; ``python -m bench`` calls ``measure``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import stats
from shards.models import ProcessRecord, Run
from shards.states import ProcessState
from shards_controller.store import JournalEntry, WriteBatch
from shards_controller.store.mongo import MongoStore
from shards_controller.store.mongo_commands import journal_doc, key_doc, record_doc, run_doc
from shards_controller.store.mongo_journal import journal_pages

SIZES = (1000, 20_000, 100_000)
RECORDS = 1000
OPS = 20  # timed operations of each kind per size and rep
_PRELOAD_CHUNK = 5000

# What a launch does until its start is persisted: the group commit alone when its client
# vouches its key new (the Python client's own keys); a key the caller chose is looked up first
# (``key_lookup``, measured beside it).
_LAUNCH = ("group_commit",)


async def measure(
    uri: str, reps: int, log: Callable[[str], None], sizes: tuple[int, ...] = SIZES
) -> dict[str, Any]:
    """Per operation and collection size, the medians over ``reps`` of each rep's p50 (ms)."""
    samples: dict[str, list[float]] = {}
    for size in sizes:
        store = MongoStore(uri, f"bench_floor_{size}_{uuid.uuid4().hex[:8]}")
        await store.open()
        try:
            began = time.monotonic()
            await _preload(store, size)
            log(f"   {size:,} runs preloaded in {time.monotonic() - began:.1f} s")
            lease = await store.acquire_lease("floor", "floor:0", timedelta(hours=1))
            assert lease is not None
            # As a take-over does: from then on the store knows the whole log (a key lookup
            # is one find, not a replay of the log first, as on a standby).
            await store.load_records()
            for rep in range(reps):
                figures = await _rep(store, lease.term, size)
                for op, p50 in figures.items():
                    samples.setdefault(f"{op}@{size}", []).append(p50)
                log(
                    f"   {size:,} docs, rep {rep + 1}/{reps} (ms): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
                )
        finally:
            await store.db.client.drop_database(store.db.name)
            await store.close()
    result: dict[str, Any] = {key: stats.median(values) for key, values in samples.items()}
    for size in sizes:
        result[f"launch_ms@{size}"] = sum(result[f"{op}@{size}"] for op in _LAUNCH)
    result["sizes"] = list(sizes)
    result["operations"] = list(_LAUNCH)
    result["launch_formula"] = " + ".join(_LAUNCH)
    return result


async def _preload(store: MongoStore, size: int) -> None:
    """``size`` ended runs, their keys and journal entries, and RECORDS records, in the store's format."""
    db, now = store.db, datetime.now(UTC)
    records = [record_doc(ProcessRecord("floor", f"p{n}", revision=n + 1), 1) for n in range(RECORDS)]
    await db.records.insert_many(records)
    for start in range(0, size, _PRELOAD_CHUNK):
        batch = range(start, min(size, start + _PRELOAD_CHUNK))
        runs = [old_run(n) for n in batch]
        await db.runs.insert_many([run_doc(run, 1, now) for run in runs])
        await db.keys.insert_many([key_doc(run, 1) for run in runs])
        await db.journal.insert_many(
            [
                journal_doc(JournalEntry(RECORDS + n + 1, "floor", run.process_id, None), 1)
                for n, run in zip(batch, runs, strict=True)
            ]
        )


def old_run(n: int) -> Run:
    return Run(
        f"old-{n}",
        "floor",
        f"p{n % RECORDS}",
        state=ProcessState.DONE,
        idempotency_key=f"old-key-{n}",
        created_at=datetime.now(UTC),
    )


def launched(scope_id: str, process_id: str, revision: int) -> WriteBatch:
    """What a group commit carries of one launch that found a free worker: its run (with a key),
    its record and its journal entry, running."""
    run = Run(
        uuid.uuid4().hex,
        scope_id,
        process_id,
        state=ProcessState.RUNNING,
        worker_id="w",
        idempotency_key=uuid.uuid4().hex,
        created_at=datetime.now(UTC),
    )
    record = ProcessRecord(
        scope_id, process_id, state=ProcessState.RUNNING, run_id=run.run_id, revision=revision
    )
    return WriteBatch(
        records=[record], runs=[run], journal=[JournalEntry(revision, scope_id, process_id, record)]
    )


async def _rep(store: MongoStore, term: int, size: int) -> dict[str, float]:
    db = store.db
    revision = [10**9 + int(time.time() * 1000) % 10**6 * 1000]

    def launch(n: int) -> WriteBatch:
        revision[0] += 1
        return launched("floor", f"p{n % RECORDS}", revision[0])

    writer = store._write  # the store's own commands, one at a time

    async def key_lookup(n: int) -> Any:
        return await store.find_run_by_idempotency_key(uuid.uuid4().hex)

    async def group_commit(n: int) -> Any:
        return await store.write(launch(n), term)

    async def run_upsert(n: int) -> Any:
        return await writer.upsert(db.runs, [run_doc(launch(n).runs[0], term, datetime.now(UTC))], term)

    async def record_upsert(n: int) -> Any:
        return await writer.upsert(db.records, [record_doc(launch(n).records[0], term)], term)

    async def journal_insert(n: int) -> Any:
        return await writer.insert_new(db.journal, [journal_doc(launch(n).journal[0], term)])

    # What the write-behind makes of 25 launches' records and journal entries now: a page each.
    async def records_page(n: int) -> Any:
        docs = [record_doc(launch(n * 25 + k).records[0], term) for k in range(25)]
        return await store.pages.write(docs, [], term, n)

    async def journal_page(n: int) -> Any:
        docs = [journal_doc(launch(n * 25 + k).journal[0], term) for k in range(25)]
        return await writer.insert_new(db.journal, list(journal_pages(docs)))

    async def fence(n: int) -> Any:
        return await store._fence(term)

    async def lookup_by_field(n: int) -> Any:  # the lookup the store made before: a scan on FerretDB
        return await db.runs.find_one({"idempotency_key": uuid.uuid4().hex})

    async def ping(n: int) -> Any:  # any round trip's floor: FerretDB answers without its backend
        return await db.command("ping")

    ops: dict[str, Callable[[int], Awaitable[Any]]] = {
        "ping": ping,
        "key_lookup": key_lookup,
        "group_commit": group_commit,
        "run_upsert": run_upsert,
        "record_upsert": record_upsert,
        "journal_insert": journal_insert,
        "records_page": records_page,
        "journal_page": journal_page,
        "fence": fence,
        "lookup_by_field": lookup_by_field,
    }
    figures = {}
    for name, op in ops.items():
        timings = []
        for n in range(OPS if name != "lookup_by_field" or size <= 20_000 else 5):
            began = time.perf_counter()
            await op(n)
            timings.append((time.perf_counter() - began) * 1e3)
        figures[name] = stats.median(timings)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ferretdb_floor", description=__doc__)
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--handlers", default="postgresql,sqlite")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    from tests.support.ferretdb import start_ferretdb

    sizes = tuple(int(s) for s in args.sizes.split(","))
    for handler in args.handlers.split(","):
        server, why = start_ferretdb(Path(tempfile.mkdtemp(prefix="shards-floor-")), handler)
        try:
            if why:
                print(f"{handler}: FerretDB did not start: {why}", file=sys.stderr)
                return 1
            result = asyncio.run(measure(server.uri, args.reps, lambda m: print(m, file=sys.stderr), sizes))
        finally:
            server.stop()
        print(f"FerretDB on {handler}, p50 ms by collection size ({', '.join(f'{s:,}' for s in sizes)}):")
        ops = sorted({key.split("@")[0] for key in result if "@" in key})
        for op in ops:
            print(f"  {op:16} " + "  ".join(f"{result[f'{op}@{s}']:8.2f}" for s in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
