"""``python -m bench.ferretdb_writes [--handler sqlite] [--size 20000]``: which writes by ``_id`` scan?

The MongoDB store's hot path is lookups, writes by ``_id`` and inserts (see
``store.mongo``). This times each kind of single-document command by ``_id`` on
a collection of ``--size`` documents, on FerretDB's chosen backend: a command
whose median grows with the size scans. On FerretDB 1.24's SQLite backend only
``find`` by ``_id`` and ``insert`` stay flat; every ``update``, ``delete`` and
``findAndModify`` scans, which is why the store cannot be flat there.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from tests.support.ferretdb import HANDLERS, start_ferretdb


async def _median_ms(call: Callable[[int], Awaitable[Any]], times: int = 15) -> float:
    taken = []
    for n in range(times):
        began = time.perf_counter()
        await call(n)
        taken.append((time.perf_counter() - began) * 1000)
    return statistics.median(taken)


async def main(handler: str, size: int) -> None:
    server, why = start_ferretdb(Path(tempfile.mkdtemp(prefix="ferretdb-writes-")), handler)
    if why:
        raise SystemExit(why)
    try:
        db: Any = AsyncMongoClient(server.uri).get_database("writes")
        runs = db.runs
        for start in range(0, size, 1000):
            await runs.insert_many(
                [{"_id": f"r{n}", "term": 1, "pad": "x" * 200} for n in range(start, start + 1000)]
            )

        def update(prefix: str, step: int, upsert: bool) -> Callable[[int], Awaitable[Any]]:
            def call(n: int) -> Awaitable[Any]:
                doc_id = f"{prefix}{n * step}"
                statement = {"q": {"_id": doc_id}, "u": {"_id": doc_id, "term": 1}, "upsert": upsert}
                command: Awaitable[Any] = db.command({"update": "runs", "updates": [statement]})
                return command

            return call

        commands: dict[str, Callable[[int], Awaitable[Any]]] = {
            "find_one {_id}": lambda n: runs.find_one({"_id": f"r{n * 7}"}),
            "insert (new _id)": lambda n: runs.insert_one({"_id": f"new{n}", "term": 1}),
            "update {_id}": update("r", 11, upsert=False),
            "update {_id} upsert (exists)": update("r", 13, upsert=True),
            "update {_id} upsert (new)": update("up", 1, upsert=True),
            "findAndModify {_id}": lambda n: runs.find_one_and_update(
                {"_id": f"r{n * 17}"}, {"$set": {"t": 2}}
            ),
            "delete {_id}": lambda n: runs.delete_one({"_id": f"new{n}"}),
        }
        print(f"FerretDB/{handler}, {size:,} documents: median of 15, ms")
        for name, call in commands.items():
            print(f"  {name:30s} {await _median_ms(call):8.2f}", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler", choices=HANDLERS, default="sqlite")
    parser.add_argument("--size", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.handler, args.size))
