"""``python -m bench [--quick]``: every scenario, on both stores, side by side with Celery.

Starts FerretDB, Redis, a Celery worker, and per scenario a controller and its
workers (all subprocesses), runs the scenarios, prints the table, writes
``bench/results/latest.json``, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import celery_side, ferretdb_floor, floor, report, scenarios, stats, takeover_scenarios
from bench.probe import Sink
from bench.scenarios import Bench, LatencyProbe, Settings, Stack
from bench.services import ROOT, Service, Services, StartError

SCENARIOS = ("latency", "throughput", "progress", "watch", "memory", "failover", "floor")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rep_summary(samples: list[float]) -> dict[str, float]:
    return stats.summary(samples)


class Run:
    def __init__(self, args: argparse.Namespace, services: Services) -> None:
        self.args = args
        self.settings = Settings.quick() if args.quick else Settings()
        self.services = services
        self.wanted = set(args.only.split(",")) if args.only else set(SCENARIOS)
        self.results: dict[str, Any] = {"embedded": {}, "mongodb": {}, "celery": {}, "notes": []}
        self.kinds: list[str] = ["embedded"]
        self.celery_app: Any = None
        self.celery_services: list[Service] = []
        self.failures = 0  # scenarios (or a store's part of one) that raised: their logs are kept

    def note(self, text: str) -> None:
        log(f"note: {text}")
        self.results["notes"].append(text)

    def failed(self, text: str) -> None:
        self.failures += 1
        self.note(text)

    async def guarded(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run one scenario; a failure is noted and the others still run."""
        began = time.monotonic()
        log(f"== {what}")
        try:
            await work()
        except Exception as error:
            self.failed(f"{what} failed: {type(error).__name__}: {error}")
        log(f"   ({time.monotonic() - began:.1f} s)")

    async def main(self) -> None:
        sink = await Sink.open()
        self.bench = Bench(self.services, sink, self.settings, log=log)
        if not self.args.no_mongodb:
            try:
                self.bench.mongodb_uri = self.services.start_ferretdb("postgresql")
                self.kinds.append("mongodb")
            except (StartError, ImportError) as error:
                self.note(f"MongoDB scenarios skipped: no FerretDB ({error})")
        if not self.args.no_celery and self.wanted & {"latency", "throughput"}:
            try:
                await self.start_celery()
            except Exception as error:
                self.note(f"Celery scenarios skipped: {error}")
        try:
            async with contextlib.AsyncExitStack() as exits:
                stacks: dict[str, Stack] = {}
                if self.wanted & {"latency", "throughput", "progress", "watch"}:
                    for kind in self.kinds:
                        stacks[kind] = await exits.enter_async_context(
                            scenarios.stack(self.bench, kind, "main")
                        )
                if "latency" in self.wanted:
                    await self.guarded("launch latency", lambda: self.latency(stacks))
                if "throughput" in self.wanted:
                    await self.guarded("sustained launches", lambda: self.throughput(stacks))
                self.stop_celery()  # its figures are in: give the CPU back
                if "progress" in self.wanted:
                    await self.guarded("report_progress cost", lambda: self.progress(stacks))
                if "watch" in self.wanted:
                    await self.guarded("watch lag", lambda: self.watch(stacks))
        finally:
            self.stop_celery()
        if "memory" in self.wanted:
            await self.guarded("controller memory", self.memory)
        if "failover" in self.wanted and "mongodb" in self.kinds:
            await self.guarded("leader failover", self.failover)
        self.results["embedded"].setdefault(
            "failover", {"not_applicable": "the embedded store serves one controller: no standby"}
        )
        if "floor" in self.wanted:
            # Last, when nothing else the harness started is running.
            await self.guarded("cost floor", self.floor)
        sink.close()

    # ------------------------------------------------------------ Celery

    async def start_celery(self) -> None:
        redis_url, redis = self.services.start_redis()
        self.celery_services.append(redis)
        concurrency = self.settings.workers
        worker = self.services.start_celery_worker(redis_url, concurrency, self.bench.sink.address)
        self.celery_services.append(worker)
        self.celery_app = celery_side.make_app(redis_url)
        await celery_side.wait_ready(self.celery_app, self.bench.sink)
        self.results["celery"]["settings"] = celery_side.settings(self.celery_app, concurrency)
        log(f"celery worker ready ({redis_url}, prefork x{concurrency})")

    def stop_celery(self) -> None:
        for service in self.celery_services:
            self.services.stop(service)
        self.celery_services = []
        if self.celery_app is not None:
            with contextlib.suppress(Exception):
                self.celery_app.close()

    # ------------------------------------------------------------ scenarios

    async def latency(self, stacks: dict[str, Stack]) -> None:
        s = self.settings
        probes = {}
        for kind, target in stacks.items():
            probes[kind] = LatencyProbe(self.bench, target, 20 + s.reps * s.launches(kind, "latency"))
            await probes[kind].open(warmup=20)
        if self.celery_app is not None:
            await celery_side.measure_latency(self.celery_app, self.bench.sink, 20, "warmup")
        reps: dict[str, dict[str, list[dict[str, float]]]] = {}
        for rep in range(s.reps):
            # Interleaved, so that a noisy minute of the machine hits every system alike.
            for kind, latency_probe in probes.items():
                # Not while an earlier system's store still writes behind (another's cost).
                await scenarios.store_servers_idle()
                samples = await latency_probe.rep(s.launches(kind, "latency"))
                for figure, values in samples.items():
                    reps.setdefault(kind, {}).setdefault(figure, []).append(_rep_summary(values))
            if self.celery_app is not None:
                await scenarios.store_servers_idle()
                values = await celery_side.measure_latency(
                    self.celery_app, self.bench.sink, s.latency_launches, f"r{rep}"
                )
                reps.setdefault("celery", {}).setdefault("start_ms", []).append(_rep_summary(values))
            log(
                f"   rep {rep + 1}/{s.reps}: "
                + ", ".join(
                    f"{kind} p50 {figures['start_ms'][-1]['p50']:.2f} ms" for kind, figures in reps.items()
                )
            )
        for latency_probe in probes.values():
            await latency_probe.close()
        for kind, figures in reps.items():
            self.results[kind]["latency"] = {
                figure: stats.medians_of_reps(values) for figure, values in figures.items()
            }

    async def throughput(self, stacks: dict[str, Stack]) -> None:
        s = self.settings
        reps: dict[str, list[dict[str, float]]] = {}
        failed: set[str] = set()
        for rep in range(s.reps):
            for kind, target in stacks.items():
                if kind in failed:
                    continue
                try:
                    result = await scenarios.throughput_rep(
                        self.bench, target, s.launches(kind, "throughput"), s.throughput_concurrency
                    )
                except Exception as error:
                    self.failed(f"sustained launches on {kind} failed: {type(error).__name__}: {error}")
                    failed.add(kind)
                    continue
                reps.setdefault(kind, []).append(result)
            if self.celery_app is not None:
                for variant, ignore in (("celery", False), ("celery_no_results", True)):
                    result = await celery_side.measure_throughput(
                        self.celery_app,
                        self.bench.sink,
                        s.throughput_launches,
                        f"{variant}{rep}",
                        ignore_result=ignore,
                    )
                    reps.setdefault(variant, []).append(result)
            log(
                f"   rep {rep + 1}/{s.reps}: "
                + ", ".join(
                    f"{kind} {values[-1]['started_per_s']:,.0f}/s"
                    for kind, values in reps.items()
                    if len(values) == rep + 1
                )
            )
        for kind, values in reps.items():
            started_per_s = stats.median([v["started_per_s"] for v in values])
            # Cores each part used while launching (of ``os.cpu_count()``): where the time went.
            cpu = {
                part: stats.median([v[part] for v in values])
                for part in ("controller_cpu", "workers_cpu", "harness_cpu", "store_servers_cpu")
                if part in values[0]
            }
            summary: dict[str, Any] = {
                "started_per_s": started_per_s,
                "accepted_per_s": stats.median([v["accepted_per_s"] for v in values]),
                "cpu": cpu,
                "launches_per_rep": values[0]["count"],
                "reps": values,
            }
            if cpu:
                # What one launch costs the machine, whoever spends it: a ceiling is the cores over it.
                summary["cpu_ms_per_launch"] = sum(cpu.values()) / started_per_s * 1e3
            if kind.startswith("celery"):
                self.results["celery"]["throughput" + kind.removeprefix("celery")] = summary
            else:
                summary.update(
                    workers=s.workers,
                    capacity_per_worker=s.capacity,
                    launches_in_flight=s.throughput_concurrency,
                )
                self.results[kind]["throughput"] = summary

    async def progress(self, stacks: dict[str, Stack]) -> None:
        for kind, target in stacks.items():
            self.results[kind]["progress_cost"] = result = await scenarios.progress_cost(self.bench, target)
            log(f"   {kind}: {result['ns_per_call']:.0f} ns per call")

    async def watch(self, stacks: dict[str, Stack]) -> None:
        s = self.settings
        if "embedded" in stacks:
            sweep = []
            for watchers in s.watch_sweep:
                result = await scenarios.watch_lag(
                    self.bench, stacks["embedded"], watchers, s.progress_seconds
                )
                sweep.append(result)
                log(f"   embedded, {watchers} watchers: staleness p99 {result['staleness_ms']['p99']:.1f} ms")
            self.results["embedded"]["watch_lag_sweep"] = sweep
        for kind, target in stacks.items():
            result = await scenarios.watch_lag(self.bench, target, s.progress_watchers, s.progress_seconds)
            result["worker_progress_interval_s"] = 0.05
            self.results[kind]["watch_lag"] = result
            log(
                f"   {kind}: staleness p99 {result['staleness_ms']['p99']:.1f} ms, "
                f"delivered p99 {result['delivered_lag_ms']['p99']:.1f} ms"
            )

    async def memory(self) -> None:
        s = self.settings
        for kind in self.kinds:
            result = await takeover_scenarios.memory(self.bench, kind, s.memory_records, s.memory_watchers)
            self.results[kind]["memory"] = result
            log(f"   {kind}: {result['rss_mb']:.0f} MB (defined in {result['define_s']:.1f} s)")

    async def failover(self) -> None:
        self.results["mongodb"]["failover"] = await takeover_scenarios.failover(
            self.bench, self.settings.failover_reps
        )

    async def floor(self) -> None:
        settings = floor.FloorSettings.quick() if self.args.quick else floor.FloorSettings()
        self.results["floor"] = result = await floor.measure(self.services, settings, log)
        log(f"   floor of launch -> code starts: {result['launch_floor_ms']:.2f} ms")
        if "mongodb" in self.kinds:
            log("   FerretDB, one operation at a time:")
            result["ferretdb"] = ferretdb = await ferretdb_floor.measure(
                self.bench.mongodb_uri, settings.reps, log
            )
            sizes = " / ".join(f"{ferretdb[f'launch_ms@{size}']:.1f}" for size in ferretdb["sizes"])
            log(f"   a launch's store round trips on FerretDB: {sizes} ms")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--no-mongodb", action="store_true", help="the embedded store only")
    parser.add_argument("--no-celery", action="store_true", help="no Celery side (no ratios)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "latest.json", help="where the JSON goes"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs and data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(SCENARIOS)
    if unknown:
        log(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="shards-bench-"))
    services = Services(workdir)
    # SIGTERM ends the run like Ctrl-C does, through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    run = Run(args, services)
    began = time.monotonic()
    log(f"shards bench ({'quick' if args.quick else 'full'}); services' logs in {workdir}")
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
    settings = {"mode": "quick" if args.quick else "full", **asdict(run.settings)}
    document = report.document(run.results, settings, elapsed)
    report.write_json(args.output, document)
    rows = report.build_rows(run.results)
    print(report.text_table(rows))
    if "floor" in run.results:
        print("\n" + report.floor_text(run.results))
    for text in run.results["notes"]:
        print(f"note: {text}")
    print(f"\n{elapsed:.0f} s; JSON in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
