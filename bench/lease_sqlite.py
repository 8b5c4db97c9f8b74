"""``python -m bench.lease_sqlite``: on FerretDB's SQLite backend, does a lease renewal wait behind
the write-behind's updates when both are in one database?

That backend keeps each database in one SQLite file, written by one writer at a time. This starts
a FerretDB on SQLite, keeps four commands of four updates each in flight on a collection of 2,000
documents (as ``store.mongo_behind`` writes records), and renews a lease document meanwhile, 20
times, first in the same database, then in a database of its own
(``mongo_schema.lease_database``). It prints the renewals' p50 and max: a renewal slower than
about 1 s (the lease's TTL less what a leader waits before renewing) is a lease lost.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne

from tests.support.ferretdb import start_ferretdb

DOCUMENTS = 2000
WRITERS = 4
RENEWALS = 20


async def _renewals(uri: str, data_database: str, lease_database: str) -> list[float]:
    data_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    lease_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, maxPoolSize=2)
    try:
        data = data_client.get_database(data_database)
        await data.r.insert_many([{"_id": f"k{i}", "v": 0, "pad": "x" * 600} for i in range(DOCUMENTS)])
        lease = lease_client.get_database(lease_database).lease
        await lease.update_one({"_id": "leader"}, {"$set": {"renewed": 0}}, upsert=True)
        stop = asyncio.Event()

        async def writer(first: int) -> None:
            n = first
            while not stop.is_set():
                ids = [f"k{(n + k) % DOCUMENTS}" for k in range(4)]
                updates = [UpdateOne({"_id": i}, {"$set": {"v": n}}) for i in ids]
                await data.r.bulk_write(updates, ordered=False)
                n += 4 * WRITERS

        writers = [asyncio.create_task(writer(4 * w)) for w in range(WRITERS)]
        took = []
        for n in range(RENEWALS):
            began = time.perf_counter()
            await lease.find_one_and_update({"_id": "leader"}, {"$set": {"renewed": n}})
            took.append((time.perf_counter() - began) * 1e3)
            await asyncio.sleep(0.1)  # a leader renews every TTL / 3; this is 1/5 of that
        stop.set()
        await asyncio.gather(*writers)
        return took
    finally:
        await asyncio.gather(data_client.close(), lease_client.close())


async def _main(uri: str) -> None:
    cases = (("in the data's database", "shards", "shards"), ("in a database of its own", "own", "own_lease"))
    for where, data, lease in cases:
        took = await _renewals(uri, data, lease)
        print(f"lease {where}: renewal p50 {statistics.median(took):.1f} ms, max {max(took):.1f} ms")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="shards-lease-sqlite-"))
    server, why = start_ferretdb(workdir, "sqlite")
    if why:
        server.stop()
        print(f"no FerretDB: {why}")
        return 2
    try:
        asyncio.run(_main(server.uri))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
