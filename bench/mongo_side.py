"""``python -m bench.mongo_side [--quick]``: the MongoDB store's figures, side by side in one run.

The embedded store, the MongoDB store on FerretDB's PostgreSQL backend
(``mongodb``), on its SQLite backend (``mongodb-sqlite``), and Celery + Redis:

- launch -> code starts (one at a time) and sustained launches, interleaved
  repetitions as in ``python -m bench``;
- sustained launches in a steady state: 10,000 in a row (``steady``), on
  FerretDB/PostgreSQL and embedded. The MongoDB store writes behind: 2,000
  launches end before its write-behind has caught up with them, and past
  ``mongo_behind.MOST_BEHIND`` documents behind the commits wait for it, so
  only a longer run shows the rate the write-behind can carry;
- flatness: launch -> code p50 on a store preloaded (in the store's own
  document format: runs and their keys) with 1,000 and with 100,000 runs;
- leader kill -9 -> a launch accepted, over 10 kills (PostgreSQL);
- a scope of 10,000 processes: DefineProcesses, then launch -> code p50 in it,
  then 64 launches in flight for a minute, watching whether the lone
  controller keeps its lease (PostgreSQL, and embedded for reference);
- controller memory with 100,000 records and 1,000 watchers (PostgreSQL);
- the floor: a launch's store round trips by collection size, both backends
  (``bench/ferretdb_floor.py``).

Writes ``bench/results/mongo_side.json`` and prints the figures against the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ferretdb_floor, scenarios, stats, takeover_scenarios
from bench.__main__ import Run, log
from bench.probe import Sink
from bench.scenarios import Bench, LatencyProbe, Settings, Stack
from bench.services import ROOT, Services
from shards_controller.store.mongo import MongoStore

MONGO_KINDS = ("mongodb", "mongodb-sqlite")
BACKEND = {"mongodb": "postgresql", "mongodb-sqlite": "sqlite"}


def settings(quick: bool) -> tuple[Settings, dict[str, Any]]:
    if quick:
        base = Settings.quick()
        base.mongodb_latency_launches, base.mongodb_throughput_launches = 50, 500
        extra = {"flat_sizes": (1000, 20_000), "failover_kills": 3, "big_scope": 2000, "lease_minute_s": 15.0}
        extra.update(flat_launches=50, floor_sizes=(1000,), floor_reps=1, steady_launches=2000, steady_reps=1)
        return base, extra
    base = Settings(mongodb_latency_launches=200, mongodb_throughput_launches=2000)
    extra = {"flat_sizes": (1000, 100_000), "failover_kills": 10, "big_scope": 10_000, "lease_minute_s": 60.0}
    extra.update(
        flat_launches=100, floor_sizes=(1000, 20_000), floor_reps=3, steady_launches=10_000, steady_reps=3
    )
    return base, extra


class MongoSide(Run):
    def __init__(self, args: argparse.Namespace, services: Services) -> None:
        super().__init__(args, services)
        self.settings, self.extra = settings(args.quick)
        self.results.update({kind: {} for kind in MONGO_KINDS})

    async def main(self) -> None:
        sink = await Sink.open()
        self.bench = Bench(self.services, sink, self.settings, log=log)
        for kind in MONGO_KINDS:
            uri = self.services.start_ferretdb(BACKEND[kind])
            self.bench.mongodb_uris[kind] = uri
            self.kinds.append(kind)
        self.bench.mongodb_uri = self.bench.mongodb_uris["mongodb"]
        wanted = self.wanted
        side_by_side = bool(wanted & {"latency", "throughput"})
        # The product on a store that costs next to nothing (SQLite in memory): its own ceiling
        # on this machine, which no store can lift it above.
        self.kinds.insert(0, "memory")
        self.results["memory"] = {}
        if self.args.without_sqlite:
            self.kinds.remove("mongodb-sqlite")
        if side_by_side:
            try:
                await self.start_celery()
            except Exception as error:
                self.note(f"Celery scenarios skipped: {error}")
        try:
            async with contextlib.AsyncExitStack() as exits:
                stacks: dict[str, Stack] = {}
                for kind in self.kinds if side_by_side else ():
                    stacks[kind] = await exits.enter_async_context(scenarios.stack(self.bench, kind, "main"))
                if "latency" in wanted:
                    await self.guarded("launch latency", lambda: self.latency(stacks))
                if "throughput" in wanted:
                    await self.guarded("sustained launches", lambda: self.throughput(stacks))
        finally:
            self.stop_celery()
        if "steady" in wanted:
            for kind in ("mongodb", "embedded"):
                await self.guarded(
                    f"steady sustained launches on {kind}", functools.partial(self.steady, kind)
                )
        if "flatness" in wanted:
            for kind in MONGO_KINDS:
                await self.guarded(f"flatness on {kind}", functools.partial(self.flatness, kind))
        if "failover" in wanted:
            await self.guarded("leader failover", self.failover_kills)
        if "scope" in wanted:
            for kind in ("mongodb", "embedded"):
                await self.guarded(f"a big scope on {kind}", functools.partial(self.big_scope, kind))
        if "memory" in wanted:
            await self.guarded("controller memory", self.memory_pg)
        if "floor" in wanted:
            await self.guarded("FerretDB floor", self.ferretdb_floor)
        sink.close()

    # ------------------------------------------------------------ scenarios

    async def flatness(self, kind: str) -> None:
        figures: dict[str, Any] = {}
        for size in self.extra["flat_sizes"]:
            store_uri = self.bench.store_uri(kind, f"flat{size}")
            store = MongoStore(store_uri)
            await store.open()
            began = time.monotonic()
            try:
                await _preload_runs(store, size)
            finally:
                await store.close()
            preload_s = time.monotonic() - began
            launches = self.extra["flat_launches"]
            async with scenarios.stack(self.bench, kind, f"flat{size}", store=store_uri) as target:
                probe = LatencyProbe(self.bench, target, 20 + self.settings.reps * launches)
                await probe.open(warmup=20)
                p50s = []
                for _ in range(self.settings.reps):
                    p50s.append(stats.summary((await probe.rep(launches))["start_ms"])["p50"])
                await probe.close()
            figures[str(size)] = {"p50_ms": stats.median(p50s), "reps_p50_ms": p50s, "preload_s": preload_s}
            log(f"   {kind}, {size:,} runs stored: launch -> code p50 {stats.median(p50s):.2f} ms")
        sizes = [str(s) for s in self.extra["flat_sizes"]]
        figures["ratio"] = figures[sizes[-1]]["p50_ms"] / figures[sizes[0]]["p50_ms"]
        self.results[kind]["flatness"] = figures

    async def steady(self, kind: str) -> None:
        """``steady_launches`` launches in a row, 64 in flight, on a stack of its own."""
        count, reps = self.extra["steady_launches"], self.extra["steady_reps"]
        async with scenarios.stack(self.bench, kind, "steady") as target:
            results = []
            for rep in range(reps):
                result = await scenarios.throughput_rep(
                    self.bench, target, count, self.settings.throughput_concurrency
                )
                results.append(result)
                rate = result["started_per_s"]
                log(f"   {kind}: {count:,} launches in a row, rep {rep + 1}/{reps}: {rate:,.0f}/s")
        self.results[kind]["steady"] = {
            "launches_per_rep": count,
            "started_per_s": stats.median([r["started_per_s"] for r in results]),
            "reps": results,
        }

    async def failover_kills(self) -> None:
        result = await takeover_scenarios.failover(self.bench, self.extra["failover_kills"])
        self.results["mongodb"]["failover"] = result
        log(
            f"   accepted after kill -9: median {result['accepted_s']['median']:.2f} s, "
            f"max {result['accepted_s']['max']:.2f} s"
        )

    async def big_scope(self, kind: str) -> None:
        size = self.extra["big_scope"]
        async with scenarios.stack(self.bench, kind, "big") as target:
            client = target.client
            probe = LatencyProbe(self.bench, target, size)  # its scope: ``size`` processes
            scope_id = probe.scope_id
            began = time.monotonic()
            await client.define_processes(scope_id)
            define_s = time.monotonic() - began
            log(f"   {kind}: {size:,} processes defined in {define_s:.1f} s")
            # The define's own write-behind (10,000 records) is not a launch's cost.
            await scenarios.store_servers_idle()
            # One at a time as the latency figure: the next once the run's end is stored.
            await probe.open(warmup=20, define=False)  # defining it again would write its records again
            p50 = stats.summary((await probe.rep(100))["start_ms"])["p50"]
            await probe.close()
            log(f"   {kind}: launch -> code p50 in it {p50:.2f} ms")
            sustained = await _launch_for(client, scope_id, size, 120, self.extra["lease_minute_s"])
            controller_log = target.controller.log_path.read_text(errors="replace")
            stepped_down = controller_log.count("stepped down")
            renewals_failed = controller_log.count("lease renewal failed")
            # A launch of a process still active (the cycle came back to it) is refused
            # with FailedPrecondition: that is the scope's load, not a lost lease.
            kept = stepped_down == 0 and renewals_failed == 0 and not sustained["unavailable"]
            log(
                f"   {kind}: 64 in flight for {self.extra['lease_minute_s']:.0f} s: "
                f"{sustained['launched']:,} launches ({sustained['per_s']:,.0f}/s), "
                f"{sustained['errors']} refused ({sustained['refused_by']}); "
                f"lease {'kept' if kept else 'LOST'}"
            )
        self.results[kind]["big_scope"] = {
            "processes": size,
            "define_s": define_s,
            "launch_p50_ms": p50,
            "in_flight": 64,
            **sustained,
            "stepped_down": stepped_down,
            "lease_renewals_failed": renewals_failed,
            "lease_kept": kept,
        }

    async def memory_pg(self) -> None:
        s = self.settings
        result = await takeover_scenarios.memory(self.bench, "mongodb", s.memory_records, s.memory_watchers)
        self.results["mongodb"]["memory"] = result
        log(f"   mongodb: {result['rss_mb']:.0f} MB")

    async def ferretdb_floor(self) -> None:
        floor: dict[str, Any] = {}
        for kind in MONGO_KINDS:
            log(f"   {kind}:")
            floor[kind] = await ferretdb_floor.measure(
                self.bench.mongodb_uris[kind], self.extra["floor_reps"], log, self.extra["floor_sizes"]
            )
        self.results["ferretdb_floor"] = floor


async def _preload_runs(store: MongoStore, size: int) -> None:
    """``size`` ended runs and their keys, as the store writes them (runs and keys at once)."""
    from datetime import UTC, datetime

    from shards_controller.store.mongo_commands import key_doc, run_doc

    db, now = store.db, datetime.now(UTC)
    chunk = 5000
    for start in range(0, size, chunk):
        runs = [ferretdb_floor.old_run(n) for n in range(start, min(size, start + chunk))]
        await asyncio.gather(
            db.runs.insert_many([run_doc(run, 1, now) for run in runs], ordered=False),
            db.keys.insert_many([key_doc(run, 1) for run in runs], ordered=False),
        )


async def _launch_for(client: Any, scope_id: str, size: int, first: int, seconds: float) -> dict[str, Any]:
    """64 launches in flight for ``seconds``, cycling through the scope's processes."""
    counter = iter(range(10**9))
    launched = errors = 0
    refused_by: dict[str, int] = {}
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    began = time.monotonic()

    async def launcher() -> None:
        nonlocal launched, errors
        while time.monotonic() < deadline:
            n = first + next(counter) % (size - first)
            try:
                await client.launch_process(scope_id, f"p{n}")
                launched += 1
            except Exception as error:  # counted: the figure is how many were refused, and why
                errors += 1
                refused_by[type(error).__name__] = refused_by.get(type(error).__name__, 0) + 1
                if len(messages) < 5:
                    messages.append(f"{type(error).__name__}: {error}")

    await asyncio.gather(*(launcher() for _ in range(64)))
    elapsed = time.monotonic() - began
    return {
        "seconds": elapsed,
        "launched": launched,
        "per_s": launched / elapsed,
        "errors": errors,
        "refused_by": refused_by,
        "unavailable": refused_by.get("Unavailable", 0),
        "error_samples": messages,
    }


def summary(results: dict[str, Any]) -> str:
    def get(*path: str) -> Any:
        node: Any = results
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return float("nan")
            node = node[key]
        return node

    celery_p50 = get("celery", "latency", "start_ms", "p50")
    pg_p50 = get("mongodb", "latency", "start_ms", "p50")
    lines = [
        "figure | target | in memory (ceiling) | embedded | FerretDB/PG | FerretDB/SQLite | Celery",
        "---|---|---|---|---|---|---",
    ]

    def row(name: str, target: str, figure: tuple[str, ...], fmt: str = "{:.2f}") -> None:
        kinds = ("memory", "embedded", "mongodb", "mongodb-sqlite")
        cells = [fmt.format(get(kind, *figure)) for kind in kinds]
        lines.append(f"{name} | {target} | " + " | ".join(cells) + f" | {fmt.format(get('celery', *figure))}")

    row("launch -> code p50 (ms)", "<= 5 ms, <= 3x Celery", ("latency", "start_ms", "p50"))
    row("launch -> code p99 (ms)", "", ("latency", "start_ms", "p99"))
    row("code starts -> its end seen by a watcher, p50 (ms)", "", ("latency", "end_seen_ms", "p50"))
    row("sustained launches (/s)", ">= 1,000/s", ("throughput", "started_per_s"), "{:,.0f}")
    for part in ("controller", "workers", "harness", "store_servers"):
        row(f"  cores used meanwhile: {part.replace('_', ' ')}", "", ("throughput", "cpu", f"{part}_cpu"))
    row("  machine CPU per launch (ms)", "", ("throughput", "cpu_ms_per_launch"))
    row("sustained, 10,000 in a row (/s)", ">= 1,000/s", ("steady", "started_per_s"), "{:,.0f}")
    row("flatness (p50 100k / 1k)", "<= 1.3", ("flatness", "ratio"))
    row("leader kill -9 -> accepted, max (s)", "<= 3 s", ("failover", "accepted_s", "max"))
    row("big scope: define (s)", "<= 10 s", ("big_scope", "define_s"), "{:.1f}")
    row("big scope: launch -> code p50 (ms)", "<= 5 ms", ("big_scope", "launch_p50_ms"))
    row("big scope: 64 in flight, launches/s", "", ("big_scope", "per_s"), "{:,.0f}")
    row("big scope: lease kept", "yes", ("big_scope", "lease_kept"), "{}")
    row("memory, 100k records + 1k watchers (MB)", "<= 150 MB", ("memory", "rss_mb"), "{:.0f}")
    lines.append(
        f"\nratio of FerretDB/PG's launch -> code p50 to Celery's: {pg_p50 / celery_p50:.2f}x (target <= 3x)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mongo_side", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="latency,throughput,steady,flatness,failover,scope,memory,floor")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "mongo_side.json")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--without-sqlite",
        action="store_true",
        help="latency and sustained launches without FerretDB/SQLite, whose write-behind (an update "
        "there scans its collection) can outlast the wait for idle store servers and run in the others' time",
    )
    parser.add_argument("--reps", type=int, default=0, help="repetitions of each figure (default 5; quick 2)")
    args = parser.parse_args(argv)
    args.no_mongodb = args.no_celery = False
    workdir = Path(tempfile.mkdtemp(prefix="shards-bench-mongo-"))
    services = Services(workdir)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    run = MongoSide(args, services)
    run.wanted = set(args.only.split(","))
    if args.reps:
        run.settings.reps = args.reps
    began = time.monotonic()
    log(f"shards bench, MongoDB side ({'quick' if args.quick else 'full'}); logs in {workdir}")
    try:
        asyncio.run(run.main())
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        services.stop_all()
        if args.keep_logs or run.failures:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - began
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {"elapsed_s": elapsed, "extra": run.extra, "results": run.results}
    args.output.write_text(json.dumps(document, indent=2, default=str))
    print(summary(run.results))
    for text in run.results["notes"]:
        print(f"note: {text}")
    print(f"\n{elapsed:.0f} s; JSON in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
