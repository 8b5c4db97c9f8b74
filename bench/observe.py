"""Observability's costs: ``python -m bench.observe [--reps 5] [--launches 2000] [--scrape-s 1]``.

``--only logs``: only the whole run logs' figures (3 below).

1. **context.log() per call.** A run on a real worker times 1,000,000 calls of
   ``context.log(line)`` in a tight loop, and the bare loop, 5 times; the
   figure is the median, less the loop's (the target: <= 1 us, as
   ``report_progress``).
2. **Metrics on sustained launches.** Two stacks on the embedded store, each a
   controller and 2 workers (capacity 16) as subprocesses: one with
   ``--metrics-listen`` on the controller and both workers and a scraper
   reading all three ``/metrics`` every ``--scrape-s`` (1 s: 15 times
   Prometheus's usual rate), one without. Sustained launches (as ``python -m
   bench``: 64 in flight, 2,000 distinct processes, launches / (last code
   start - first call)) on each, interleaved (on, off, on, off, ...); the
   median of each side and their ratio (target: within 5%). The counters count
   in both (they are plain numbers, always kept): what is compared is serving
   and scraping them. The scraper runs in the harness, as Prometheus would
   run elsewhere; its CPU is not the services'.
3. **Whole run logs** (``bench.observe_logs``): a burst of 100,000 lines, the
   code's loop, lines per second end to end, the controller's CPU per 1,000
   lines, and other runs' launch latency during the burst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench import stats
from bench.observe_logs import print_log_costs, run_log_costs
from bench.probe import Sink
from bench.scenarios import Bench, Settings, Stack, throughput_rep
from bench.services import Service, Services, free_port
from shards import AsyncClient
from shards._aio import run


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def log_cost(bench: Bench, target: Stack) -> dict[str, Any]:
    scope_id = f"hz.0.log{uuid.uuid4().hex[:6]}"
    result = bench.sink.expect(f"log-cost:{scope_id}")
    await target.client.launch_process(scope_id, "log-cost")
    per_call, loop_only = await asyncio.wait_for(result, 300)
    calls = [float(v) for v in per_call.split(",")]
    loops = [float(v) for v in loop_only.split(",")]
    return {
        "ns_per_call": stats.median(calls),
        "ns_per_call_minus_loop": stats.median([c - lo for c, lo in zip(calls, loops, strict=True)]),
        "repeats": calls,
    }


class Scraper:
    """Reads every ``/metrics`` URL each ``interval_s`` (in a thread: urllib blocks)."""

    def __init__(self, urls: list[str], interval_s: float) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.seconds: list[float] = []
        self.bytes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            for url in self.urls:
                started = time.perf_counter()
                body = await asyncio.to_thread(_get, url)
                self.seconds.append(time.perf_counter() - started)
                self.bytes = max(self.bytes, len(body))
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


async def start_stack(bench: Bench, name: str, metrics: bool) -> tuple[Stack, list[str]]:
    services = bench.services
    urls: list[str] = []
    extra: tuple[str, ...] = ()
    if metrics:
        port = free_port()
        extra = ("--metrics-listen", f"127.0.0.1:{port}")
        urls.append(f"http://127.0.0.1:{port}/metrics")
    controller = await services.start_controller(
        bench.store_uri("embedded", name), name=f"{name}-controller", extra=extra
    )
    workers: list[Service] = []
    for n in range(bench.settings.workers):
        worker_extra: tuple[str, ...] = ()
        if metrics:
            port = free_port()
            worker_extra = ("--metrics-listen", f"127.0.0.1:{port}")
            urls.append(f"http://127.0.0.1:{port}/metrics")
        workers += await services.start_workers(
            [controller.address],
            1,
            bench.settings.capacity,
            bench.sink.address,
            prefix=f"{name}-worker{n}",
            extra=worker_extra,
        )
    client = AsyncClient(controller.address, timeout_s=120.0)
    return Stack("embedded", controller, workers, client), urls


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="shards-bench-observe-"))
    services = Services(workdir)
    sink = await Sink.open()
    settings = Settings(reps=args.reps, throughput_launches=args.launches)
    bench = Bench(services, sink, settings, log=log)
    results: dict[str, Any] = {}
    try:
        if args.only == "logs":
            target, _ = await start_stack(bench, "logs", metrics=False)
            results["run_logs"] = await run_log_costs(bench, target, args.reps)
            await target.client.close()
            return results
        on, urls = await start_stack(bench, "metrics-on", metrics=True)
        off, _ = await start_stack(bench, "metrics-off", metrics=False)
        results["log_cost"] = await log_cost(bench, off)
        log(f"context.log: {results['log_cost']['ns_per_call_minus_loop']:.0f} ns per call (less the loop)")
        scraper = Scraper(urls, args.scrape_s)
        scraper.start()
        figures: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        for rep in range(args.reps):
            for side, target in (("on", on), ("off", off)) if rep % 2 == 0 else (("off", off), ("on", on)):
                figure = await throughput_rep(bench, target, args.launches, settings.throughput_concurrency)
                figures[side].append(figure)
                log(f"rep {rep + 1} metrics {side}: {figure['started_per_s']:.0f} launches/s")
        await scraper.stop()
        med = {side: stats.median([f["started_per_s"] for f in reps]) for side, reps in figures.items()}
        cpu = {
            side: stats.median([f["controller_cpu"] / f["started_per_s"] * 1e6 for f in reps])
            for side, reps in figures.items()
        }
        results["metrics"] = {
            "launches_per_s": med,
            "ratio_on_to_off": med["on"] / med["off"],
            "controller_cpu_us_per_launch": cpu,
            "scrapes": len(scraper.seconds),
            "scrape_ms_p50": stats.median(scraper.seconds) * 1e3 if scraper.seconds else 0.0,
            "largest_scrape_bytes": scraper.bytes,
            "reps": figures,
        }
        results["run_logs"] = await run_log_costs(bench, off, args.reps)
        for target in (on, off):
            await target.client.close()
    finally:
        sink.close()
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.observe")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--scrape-s", type=float, default=1.0)
    parser.add_argument("--only", choices=("logs",), help="only the whole run logs' figures")
    args = parser.parse_args(argv)
    results = run(main(args))
    print_log_costs(results["run_logs"])
    if args.only:
        return
    m = results["metrics"]
    print(f"context.log():             {results['log_cost']['ns_per_call_minus_loop']:.0f} ns per call")
    print(
        f"sustained launches:        metrics on {m['launches_per_s']['on']:.0f}/s, "
        f"off {m['launches_per_s']['off']:.0f}/s, on/off {m['ratio_on_to_off']:.3f}"
    )
    print(
        f"controller CPU per launch: on {m['controller_cpu_us_per_launch']['on']:.0f} us, "
        f"off {m['controller_cpu_us_per_launch']['off']:.0f} us"
    )
    print(
        f"scrapes:                   {m['scrapes']} (p50 {m['scrape_ms_p50']:.1f} ms, "
        f"largest {m['largest_scrape_bytes']} bytes)"
    )


if __name__ == "__main__":
    cli()
