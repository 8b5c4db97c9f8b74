"""What one MongoDB operation costs on the benchmark's FerretDB, measured alone.

The MongoDB side of the benchmark runs on FerretDB 1.x with its SQLite
backend (the only MongoDB-compatible server this machine can install). Until a
launch's start is persisted, the MongoDB store (``shards_controller/store/
mongo.py``) makes five round trips: the idempotency-key lookup, the lease read
(the fence), a fenced upsert of the run and one of the record (``{_id, term:
{$lte: term}}``), and the journal insert. Each is timed here with pymongo
alone, against the same server, in collections of ``sizes`` documents (a
benchmark's collections grow as it runs), so that the MongoDB figures can be
read against what FerretDB itself costs: on MongoDB the same operations are
index hits that take a fraction of a millisecond at any size.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from bench import stats

SIZES = (100, 1000)
OPS = 20  # timed operations of each kind per size and rep
PAD = "x" * 400  # a run document is about half a kilobyte


async def measure(uri: str, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Per operation and collection size, the medians over ``reps`` of each rep's p50 (ms)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    db = client[f"bench_floor_{uuid.uuid4().hex[:8]}"]
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        await db.lease.insert_one({"_id": "leader", "term": 1})
        for size in SIZES:
            runs = db[f"runs_{size}"]
            await runs.create_index([("idempotency_key", ASCENDING)], unique=True, sparse=True)
            await runs.insert_many([_run(n) for n in range(size)])
        for rep in range(reps):
            line = []
            for size in SIZES:
                figures = await _rep(db, size)
                for op, p50 in figures.items():
                    samples.setdefault(f"{op}@{size}", []).append({"p50": p50})
                line.append(f"{size:,} docs: " + ", ".join(f"{op} {ms:.1f}" for op, ms in figures.items()))
            log(f"   rep {rep + 1}/{reps} (ms): " + "; ".join(line))
    finally:
        await client.drop_database(db.name)
        await client.close()
    result: dict[str, Any] = {
        key: stats.median([rep["p50"] for rep in reps_of]) for key, reps_of in samples.items()
    }
    for size in SIZES:
        result[f"launch_ms@{size}"] = sum(result[f"{op}@{size}"] for op in _LAUNCH)
    result["sizes"] = list(SIZES)
    result["operations"] = list(_LAUNCH)
    result["launch_formula"] = " + ".join(_LAUNCH)
    return result


# What a launch does until its start is persisted, in order (see the docstring).
_LAUNCH = ("key_lookup", "lease_read", "fenced_upsert_new", "fenced_upsert_existing", "insert")


async def _rep(db: AsyncDatabase[dict[str, Any]], size: int) -> dict[str, float]:
    runs, journal = db[f"runs_{size}"], db[f"journal_{size}"]
    existing = [f"run-{n}" for n in range(min(OPS, size))]

    async def key_lookup(n: int) -> Any:
        return await runs.find_one({"idempotency_key": uuid.uuid4().hex})

    async def lease_read(n: int) -> Any:
        return await db.lease.find_one({"_id": "leader"})

    async def fenced_upsert_new(n: int) -> Any:
        doc = _run(n, fresh=True)
        return await runs.update_one({"_id": doc.pop("_id"), "term": {"$lte": 1}}, {"$set": doc}, upsert=True)

    async def fenced_upsert_existing(n: int) -> Any:
        update = {"$set": {"state": "running", "term": 1}}
        return await runs.update_one(
            {"_id": existing[n % len(existing)], "term": {"$lte": 1}}, update, upsert=True
        )

    async def insert(n: int) -> Any:
        return await journal.insert_one({"_id": f"{uuid.uuid4().hex}", "doc": PAD})

    ops: dict[str, Callable[[int], Awaitable[Any]]] = {
        "key_lookup": key_lookup,
        "lease_read": lease_read,
        "fenced_upsert_new": fenced_upsert_new,
        "fenced_upsert_existing": fenced_upsert_existing,
        "insert": insert,
    }
    figures = {}
    for name, op in ops.items():
        timings = []
        for n in range(OPS):
            began = time.perf_counter()
            await op(n)
            timings.append((time.perf_counter() - began) * 1e3)
        figures[name] = stats.median(timings)
    # What the new upserts added goes, so every rep sees the same size.
    await runs.delete_many({"fresh": True})
    return figures


def _run(n: int, fresh: bool = False) -> dict[str, Any]:
    doc = {"_id": f"run-{n}" if not fresh else f"new-{uuid.uuid4().hex}", "term": 1, "state": "done"}
    doc.update(idempotency_key=uuid.uuid4().hex, pad=PAD)
    if fresh:
        doc["fresh"] = True
    return doc
