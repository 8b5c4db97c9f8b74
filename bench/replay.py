"""``python -m bench.replay [--slots 0,250,1000] [--handler postgresql]``: what a take-over's reads
cost with ``slots`` commit-log entries not yet written behind.

The write-behind keeps the log from the oldest run it holds back (``store.mongo_behind``), at
most ``HOLD_MOST_SLOTS`` entries beyond its last round. Here a leader logs ``slots`` group
commits of 9 launches each (a run, its record, its journal entry, its key: about 36 documents,
what a commit carries at 64 launches in flight) and writes none of them behind; then a second
store takes the lease and makes the take-over's reads (``load_records``, ``load_active_runs``):
the seconds they took, which a kill -9 adds to the time until launches are accepted again.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from bench.ferretdb_floor import launched
from bench.services import Services
from shards_controller.store import WriteBatch
from shards_controller.store.mongo import MongoStore

LAUNCHES_PER_COMMIT = 9
NEVER_S = 1e9  # a write-behind that does not come


def _commit(slot: int) -> WriteBatch:
    batch = WriteBatch()
    for n in range(LAUNCHES_PER_COMMIT):
        revision = slot * LAUNCHES_PER_COMMIT + n + 1
        one = launched("replay", f"p{revision}", revision)
        batch.records += one.records
        batch.runs += one.runs
        batch.journal += one.journal
    return batch


async def takeover_s(uri: str, slots: int) -> float:
    database = f"bench_replay_{slots}_{uuid.uuid4().hex[:8]}"
    leader, successor = MongoStore(uri, database, NEVER_S), MongoStore(uri, database, NEVER_S)
    await leader.open()
    await successor.open()
    try:
        lease = await leader.acquire_lease("a", "a:1", timedelta(seconds=1))
        assert lease is not None
        await leader.load_records()
        for slot in range(slots):
            await leader.write(_commit(slot), lease.term)
        await leader.release_lease("a")
        assert await successor.acquire_lease("b", "b:1", timedelta(seconds=30)) is not None
        began = time.monotonic()
        records, runs = await asyncio.gather(successor.load_records(), successor.load_active_runs())
        seconds = time.monotonic() - began
        assert len(records) == len(runs) == slots * LAUNCHES_PER_COMMIT
        return seconds
    finally:
        await leader.close()
        await successor.close()


async def measure(handler: str, sizes: list[int], reps: int, workdir: Path) -> None:
    services = Services(workdir)
    try:
        uri = services.start_ferretdb(handler)
        for slots in sizes:
            samples = sorted([await takeover_s(uri, slots) for _ in range(reps)])
            print(
                f"FerretDB/{handler}, {slots:,} slots to replay ({slots * LAUNCHES_PER_COMMIT:,} launches): "
                f"take-over reads {samples[len(samples) // 2]:.2f} s (median of {reps}; "
                f"{', '.join(f'{s:.2f}' for s in samples)})",
                flush=True,
            )
    finally:
        services.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("--slots", default="0,250,1000")
    parser.add_argument("--handler", default="postgresql", choices=["postgresql", "sqlite"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) for size in args.slots.split(",")]
    with tempfile.TemporaryDirectory(prefix="shards-replay-") as workdir:
        asyncio.run(measure(args.handler, sizes, args.reps, Path(workdir)))


if __name__ == "__main__":
    main()
