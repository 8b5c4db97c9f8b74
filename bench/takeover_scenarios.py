"""The scenarios where a controller takes over a store's state: its memory once it has loaded
100,000 records (and holds 1,000 watchers), and a leader's ``kill -9`` until its standby accepts
a launch. Each starts its own controllers on a ``Bench`` (see ``bench.scenarios``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import stats
from bench.apps import start_tag
from bench.scenarios import WATCHES_PER_CLIENT, Bench, client_pool, stack
from shards import AsyncClient, WatchEventType

# ---------------------------------------------------------------- memory


def seed_mongodb(uri: str, scopes: list[str], per_scope: int) -> None:
    """Write the memory scenario's records straight into MongoDB, in the store's own format (a snapshot).

    FerretDB's SQLite backend scans the collection for every fenced upsert,
    so defining 100,000 records through the controller would take hours
    there; a plain insert does not scan. The controller then loads them when
    it takes the lease, as after a restart.
    """
    from pymongo import MongoClient

    from shards.models import ProcessRecord
    from shards_controller.store.mongo_commands import record_doc
    from shards_controller.store.mongo_pages import CHUNKS, Snapshot, chunk_doc, page_key, snapshot_doc

    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = client.get_default_database()
        revision = 0
        chunk_ids: list[str] = []
        for scope_id in scopes:  # a chunk a scope, as a compaction of their define would write
            docs = []
            for n in range(per_scope):
                revision += 1
                record = ProcessRecord(scope_id, f"m{n}", name=f"Record {n}", revision=revision)
                docs.append(record_doc(record, 1))
            chunk_ids.append(f"seed.{len(chunk_ids):06d}")
            db[CHUNKS].insert_one(chunk_doc(chunk_ids[-1], docs))
        db.records.insert_one(snapshot_doc(Snapshot(page_key(1, 0, 0), tuple(chunk_ids)), 1))
    finally:
        client.close()


async def memory(bench: Bench, kind: str, records: int, watchers: int) -> dict[str, Any]:
    """Controller RSS with ``records`` process records (scopes of 1,000) and ``watchers`` open watches.

    Embedded store: the records are defined through DefineProcesses. MongoDB:
    they are written to the database first and loaded by the controller when
    it starts (see ``seed_mongodb``).
    """
    per_scope = 1000
    scopes = [f"mem.{per_scope}.s{n}" for n in range(max(1, records // per_scope))]
    store = bench.store_uri(kind, "memory")
    seeded_s = 0.0
    if kind == "mongodb":
        began = time.monotonic()
        await asyncio.to_thread(seed_mongodb, store, scopes, per_scope)
        seeded_s = time.monotonic() - began
    async with stack(bench, kind, "memory", workers=1, store=store) as target:
        controller = target.controller
        baseline = controller.rss_bytes()
        began = time.monotonic()
        if kind != "mongodb":
            for scope_id in scopes:
                await target.client.define_processes(scope_id)
        define_s = time.monotonic() - began + seeded_s
        listed = len(await target.client.list_processes(scopes[-1]))
        with_records = controller.rss_bytes()
        synced = 0
        all_synced = asyncio.Event()

        async def watch(client: AsyncClient, n: int) -> None:
            nonlocal synced
            # One record each: "m100".."m999" match only themselves.
            stream = client.watch_processes(scopes[n % len(scopes)], name_contains=f"m{100 + n % 900}")
            async for event in stream:
                if event.type is WatchEventType.SYNCED:
                    synced += 1
                    if synced == watchers:
                        all_synced.set()

        async with client_pool(controller.address, watchers) as clients:
            began = time.monotonic()
            tasks = [asyncio.create_task(watch(clients[n // WATCHES_PER_CLIENT], n)) for n in range(watchers)]
            try:
                await asyncio.wait_for(all_synced.wait(), 300)
                open_s = time.monotonic() - began
                await asyncio.sleep(1.0)
                with_watchers = controller.rss_bytes()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "records": len(scopes) * per_scope,
        "records_in_last_scope": listed,
        "how": "loaded from the store at start-up" if kind == "mongodb" else "DefineProcesses",
        "watchers": watchers,
        # With MongoDB the records are loaded before the first reading.
        "rss_start_mb": baseline / 2**20 if kind != "mongodb" else float("nan"),
        "rss_with_records_mb": with_records / 2**20,
        "rss_mb": with_watchers / 2**20,
        "define_s": define_s,
        "open_watchers_s": open_s,
        "bytes_per_record": (
            (with_records - baseline) / (len(scopes) * per_scope) if kind != "mongodb" else float("nan")
        ),
        "bytes_per_watcher": (with_watchers - with_records) / watchers,
    }


# ---------------------------------------------------------------- failover


async def failover(bench: Bench, reps: int) -> dict[str, Any]:
    """Two controllers on one MongoDB; kill -9 the leader; time until a launch is accepted again.

    After each kill, a new controller is started at the killed one's address
    (as a supervisor would restart it) and becomes the standby, so the
    client's and the worker's list of addresses stays right.
    """
    services = bench.services
    store = bench.store_uri("mongodb", "failover")
    first = await services.start_controller(store, name="failover-controller-a")
    second = await services.start_controller(store, name="failover-controller-b", leading=False)
    controllers = {first.address: first, second.address: second}
    addresses = list(controllers)
    workers = await services.start_workers(addresses, 1, 8, bench.sink.address, prefix="failover-worker")
    scope_id = f"ping.{reps * 2 + 10}.fo"
    seconds: list[float] = []
    started_s: list[float] = []
    notes: list[str] = []
    n = 0
    try:
        async with AsyncClient(addresses, timeout_s=5.0, retry_deadline_s=30.0) as setup:
            await setup.define_processes(scope_id)
        for rep in range(reps):
            # A fresh client that knows both addresses and has found the leader.
            async with AsyncClient(addresses, timeout_s=5.0, retry_deadline_s=30.0) as client:
                await client.launch_process(scope_id, f"p{n}")
                n += 1
                current = controllers[client.address]
                await asyncio.sleep(1.0)  # past the first renewals of a new leader
                tag = start_tag(scope_id, f"p{n}")
                code_started = bench.sink.expect(tag)
                killed = time.time_ns()
                current.kill9()
                try:
                    await client.launch_process(scope_id, f"p{n}")
                except Exception as error:  # not accepted within the client's retry deadline
                    notes.append(f"rep {rep}: no launch accepted within 30 s: {error}")
                    seconds.append(float("inf"))
                    break
                accepted = time.time_ns()
                seconds.append((accepted - killed) / 1e9)
                try:
                    fields = await asyncio.wait_for(code_started, 30)
                    started_s.append((int(fields[0]) - killed) / 1e9)
                except TimeoutError:
                    bench.sink.forget(tag)
                    notes.append(f"rep {rep}: the launched process did not start within 30 s")
                n += 1
            bench.log(f"  failover rep {rep + 1}/{reps}: launch accepted {seconds[-1]:.2f} s after kill -9")
            services.stop(current)
            controllers[current.address] = await services.start_controller(
                store, name=f"failover-controller-{rep}", leading=False, address=current.address
            )
    finally:
        for service in [*workers, *controllers.values()]:
            services.stop(service)
    finite = [s for s in seconds if s != float("inf")]
    return {
        "reps": len(seconds),
        "accepted_s": {"median": stats.median(finite), "max": max(seconds) if seconds else float("nan")},
        "code_started_s": {"median": stats.median(started_s), "max": max(started_s, default=float("nan"))},
        "samples_s": seconds,
        "notes": notes,
    }
