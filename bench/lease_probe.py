"""``python -m bench.lease_probe [--lookups 2000]``: does the lease renewal wait behind the data?

A lone controller under 2,000 launches in flight lost its lease on FerretDB:
every launch's idempotency-key lookup queued in the driver's pool, and the
renewal queued behind them for longer than the lease's TTL. This starts a
FerretDB on PostgreSQL, fires N concurrent key lookups through a
``MongoStore`` and renews the lease meanwhile, twice: through the data's pool
(as it was) and through the store's own lease client (as it is). It prints
the renewals' latency; a renewal slower than about 1 s (the TTL less what a
leader waits before renewing) is a lease lost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from shards_controller.store.mongo import MongoStore
from tests.support.ferretdb import start_ferretdb

TTL = timedelta(seconds=1.5)


async def _probe(store: MongoStore, lookups: int, shared_pool: bool) -> str:
    lease = await store.acquire_lease("probe", "probe:0", TTL)
    assert lease is not None
    db = store.db
    latencies_ms: list[float] = []
    done = asyncio.Event()

    async def renew() -> None:
        while not done.is_set():
            began = time.perf_counter()
            if shared_pool:
                await db.lease.find_one_and_update(
                    {"_id": "leader", "holder_id": "probe", "term": lease.term},
                    {"$set": {"address": "probe:0"}},
                )
            else:
                await store.renew_lease("probe", "probe:0", TTL, lease.term)
            latencies_ms.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.05)

    renewing = asyncio.create_task(renew())
    began = time.perf_counter()
    await asyncio.gather(*(db.keys.find_one({"_id": f"key-{n}"}) for n in range(lookups)))
    elapsed = time.perf_counter() - began
    done.set()
    await renewing
    pool = "the data's pool" if shared_pool else "its own client"
    return (
        f"{lookups} lookups in {elapsed:.2f} s ({lookups / elapsed:,.0f}/s); lease renewals through {pool}: "
        f"{len(latencies_ms)}, median {statistics.median(latencies_ms):.1f} ms, "
        f"max {max(latencies_ms):.1f} ms"
    )


async def main(lookups: int) -> None:
    server, why = start_ferretdb(Path(tempfile.mkdtemp(prefix="lease-probe-")), "postgresql")
    if why:
        raise SystemExit(why)
    try:
        for shared_pool in (True, False):
            store = MongoStore(server.uri, f"probe_{int(shared_pool)}")
            await store.open()
            try:
                print(await _probe(store, lookups, shared_pool), flush=True)
            finally:
                await store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=2000)
    asyncio.run(main(parser.parse_args().lookups))
