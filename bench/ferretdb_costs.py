"""What the MongoDB store's commands cost the machine on FerretDB, in CPU: the server's and ours.

``python -m bench.ferretdb_costs [--handler postgresql] [--launches 1024]``

On a 2-core machine the sustained launch rate is bounded by the CPU that each
launch's store commands take, whoever spends it: FerretDB, PostgreSQL (their
processes, read from ``/proc``), and the controller's own driver (this
process's CPU time, ``AsyncMongoClient``). Two parts:

1. **Command shapes**: 1,024 upserts by ``{_id, term}`` of stored records, in
   batches of 64 as a group commit sends them, with N statements per command
   and C commands at once; and, for comparison, inserts of new documents.
2. **A launch's lifecycle through ``MongoStore.write``**: its launch commit (a
   new run, its record, a journal entry) and its end commit (the run, the
   record, a journal entry), in batches of 32 and 64 launches, as under load;
   and one at a time, as the latency figure has it.

The ceiling a figure implies: the machine's cores divided by the CPU per
launch (FerretDB + PostgreSQL + driver), before the product's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.services import cpu_of_commands
from shards._aio import run
from shards.models import ProcessRecord, Run
from shards.states import ProcessState
from shards_controller.store import JournalEntry, WriteBatch
from shards_controller.store.mongo import MongoStore
from shards_controller.store.mongo_commands import by_id, record_doc
from tests.support.ferretdb import HANDLERS, start_ferretdb

S = ProcessState


class Meter:
    """CPU per operation of FerretDB, PostgreSQL and this process, over a block of work."""

    async def measure(self, operations: int, work: Callable[[], Awaitable[Any]]) -> dict[str, float]:
        ferretdb, postgres, ours = (
            cpu_of_commands(("ferretdb",)),
            cpu_of_commands(("postgres",)),
            time.process_time(),
        )
        began = time.perf_counter()
        await work()
        elapsed = time.perf_counter() - began
        per = 1e3 / operations
        figures = {
            "per_s": operations / elapsed,
            "ferretdb_ms": (cpu_of_commands(("ferretdb",)) - ferretdb) * per,
            "postgres_ms": (cpu_of_commands(("postgres",)) - postgres) * per,
            "driver_ms": (time.process_time() - ours) * per,
        }
        figures["total_ms"] = figures["ferretdb_ms"] + figures["postgres_ms"] + figures["driver_ms"]
        return figures


def _line(name: str, figures: dict[str, float], unit: str) -> str:
    return (
        f"  {name:34s} {figures['per_s']:7,.0f} {unit}/s   CPU per {unit}:"
        f" FerretDB {figures['ferretdb_ms']:.2f}"
        f" + PostgreSQL {figures['postgres_ms']:.2f} + driver {figures['driver_ms']:.2f}"
        f" = {figures['total_ms']:.2f} ms"
    )


async def command_shapes(store: MongoStore, term: int, meter: Meter, count: int = 1024) -> None:
    db = store.db
    await db.records.insert_many(
        [record_doc(ProcessRecord("s", f"p{n}", revision=1), term) for n in range(count)]
    )
    print(f"upserts of {count:,} stored records by {{_id, term}}, 64 to a group commit:")
    for per_command, at_once in ((1, 16), (4, 4), (8, 4), (16, 2)):
        gate = asyncio.Semaphore(at_once)
        docs = [record_doc(ProcessRecord("s", f"p{n}", revision=2 + per_command), term) for n in range(count)]

        async def send(chunk: list[dict[str, Any]], gate: asyncio.Semaphore = gate) -> None:
            statements = [{"q": by_id(d["_id"], term, True), "u": d, "upsert": True} for d in chunk]
            async with gate:
                await db.command({"update": "records", "updates": statements, "ordered": True})

        async def upserts(docs: list[dict[str, Any]] = docs, size: int = per_command) -> None:
            for batch in range(0, count, 64):
                await asyncio.gather(*(send(docs[i : i + size]) for i in range(batch, batch + 64, size)))

        label = f"{per_command} a command, {at_once} at once"
        print(_line(label, await meter.measure(count, upserts), "upsert"), flush=True)

    async def inserts() -> None:
        for _ in range(0, count, 64):
            await db.runs.insert_many(
                [{"_id": uuid.uuid4().hex, "term": term, "pad": "x" * 400} for _ in range(64)]
            )

    print(_line("inserts, 64 a command", await meter.measure(count, inserts), "insert"), flush=True)


def _lifecycle(n: int, revision: int) -> tuple[WriteBatch, WriteBatch]:
    now = datetime.now(UTC)
    run = Run(uuid.uuid4().hex, "s", f"p{n}", state=S.RUNNING, worker_id="w", created_at=now, started_at=now)
    started = ProcessRecord("s", run.process_id, state=S.RUNNING, run_id=run.run_id, revision=revision)
    ended_run = Run(
        run.run_id,
        "s",
        run.process_id,
        state=S.DONE,
        worker_id="w",
        created_at=now,
        started_at=now,
        ended_at=now,
    )
    ended = ProcessRecord("s", run.process_id, state=S.DONE, run_id=run.run_id, revision=revision + 1)
    return (
        WriteBatch(
            records=[started], runs=[run], journal=[JournalEntry(revision, "s", run.process_id, started)]
        ),
        WriteBatch(
            records=[ended],
            runs=[ended_run],
            journal=[JournalEntry(revision + 1, "s", run.process_id, ended)],
        ),
    )


def _merged(batches: list[WriteBatch]) -> WriteBatch:
    return WriteBatch(
        records=[r for b in batches for r in b.records],
        runs=[r for b in batches for r in b.runs],
        journal=[e for b in batches for e in b.journal],
    )


async def lifecycles(store: MongoStore, term: int, meter: Meter, launches: int) -> None:
    await store.write(
        WriteBatch(records=[ProcessRecord("s", f"p{n}", revision=1) for n in range(launches)]), term
    )
    revision = [10]

    def next_lifecycles(low: int, size: int) -> tuple[WriteBatch, WriteBatch]:
        pairs = [_lifecycle(n, revision[0] + 2 * i) for i, n in enumerate(range(low, low + size))]
        revision[0] += 2 * size
        return _merged([p[0] for p in pairs]), _merged([p[1] for p in pairs])

    print(f"a launch's lifecycle through MongoStore.write (a launch commit, an end commit), {launches:,}")
    for size in (32, 64):

        async def batched(size: int = size) -> None:
            for low in range(0, launches, size):
                launch, end = next_lifecycles(low, size)
                await store.write(launch, term)
                await store.write(end, term)

        print(
            _line(f"{size} launches a commit", await meter.measure(launches, batched), "launch"), flush=True
        )

    one_at_a_time = min(launches, 200)
    commits: list[float] = []

    async def single() -> None:
        for low in range(one_at_a_time):
            for batch in next_lifecycles(low, 1):
                began = time.perf_counter()
                await store.write(batch, term)
                commits.append((time.perf_counter() - began) * 1e3)

    figures = await meter.measure(one_at_a_time, single)
    print(_line("one at a time", figures, "launch"))
    print(f"  one at a time, a commit's wall time: p50 {statistics.median(commits):.2f} ms", flush=True)


async def main(handler: str, launches: int) -> None:
    server, why = start_ferretdb(Path(tempfile.mkdtemp(prefix="ferretdb-costs-")), handler)
    if why:
        raise SystemExit(why)
    store = MongoStore(server.uri, f"costs_{uuid.uuid4().hex[:8]}")
    try:
        await store.open()
        lease = await store.acquire_lease("costs", "costs:0", timedelta(hours=1))
        assert lease is not None
        meter = Meter()
        print(f"FerretDB/{handler}, {os.cpu_count()} cores")
        await command_shapes(store, lease.term, meter)
        await lifecycles(store, lease.term, meter, launches)
    finally:
        await store.close()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler", choices=HANDLERS, default="postgresql")
    parser.add_argument("--launches", type=int, default=1024)
    args = parser.parse_args()
    run(main(args.handler, args.launches))  # the services' loop (uvloop where installed)
