"""Run control (issue 15): what isolation="process" costs and how fast its hard stop is.

    python -m bench.isolation [--launches 40] [--json out.json]

In one run, on one machine, one at a time (each figure a median of
``--launches`` launches after a warm-up):

- launch -> code starts: a Shards process in a thread, the same process
  isolated (its own OS process, forked from the worker's fork server), and a
  Celery task on the prefork pool (Redis broker), as in the main benchmark;
- stop -> ``stopped`` for an isolated process that ignores the stop: its stop
  grace (``bench.apps.STOP_GRACE_S``), then SIGTERM; the figure minus the grace
  is what the escalation itself costs;
- the extra memory of an isolated run: the private memory (USS) of each run's
  OS process, and its PSS, with several running at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import celery_side, probe
from bench.apps import STOP_GRACE_S, start_tag
from bench.services import Services
from shards import AsyncClient, ProcessState


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": _median(values),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1], 2),
        "min_ms": round(ordered[0], 2),
        "n": len(values),
    }


async def _launch_latency(client: AsyncClient, sink: probe.Sink, kind: str, count: int) -> list[float]:
    scope = f"{kind}.{count + 10}.b{uuid.uuid4().hex[:6]}"
    await client.define_processes(scope)
    latencies = []
    for n in range(count + 10):
        started = sink.expect(start_tag(scope, f"p{n}"))
        sent = time.time_ns()
        run = await client.launch_process(scope, f"p{n}")
        fields = await asyncio.wait_for(started, 20)
        await client.wait_run(run.run_id)
        if n >= 10:  # the first ones warm up (the fork server starts with the first isolated run)
            latencies.append((int(fields[0]) - sent) / 1e6)
    return latencies


def _memory_of(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name.strip()] = int(value.split()[0])  # kB
    return {
        "uss_kb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "pss_kb": fields.get("Pss", 0),
        "rss_kb": fields.get("Rss", 0),
    }


async def _stop_and_memory(client: AsyncClient, sink: probe.Sink, parallel: int, reps: int) -> dict[str, Any]:
    scope = f"isostop.{parallel}.b{uuid.uuid4().hex[:6]}"
    await client.define_processes(scope)
    stops: list[float] = []
    memory: list[dict[str, int]] = []
    for rep in range(reps):
        pids = {}
        runs = {}
        waits = {f"s{n}": sink.expect(f"pid:{scope}/s{n}") for n in range(parallel)}
        for n in range(parallel):
            runs[f"s{n}"] = (await client.launch_process(scope, f"s{n}")).run_id
        for process_id, future in waits.items():
            pids[process_id] = int((await asyncio.wait_for(future, 20))[0])
        await asyncio.sleep(0.5)  # settled: imports done, the loop running
        if rep == 0:
            memory = [_memory_of(pid) for pid in pids.values()]
        for process_id, run_id in runs.items():
            asked = time.monotonic()
            await client.stop_process(scope, process_id)
            ended = await client.wait_run(run_id)
            stops.append((time.monotonic() - asked) * 1000)
            assert ended.state is ProcessState.STOPPED, ended
    return {
        "stop_to_stopped": _summary(stops),
        "stop_grace_ms": STOP_GRACE_S * 1000,
        "escalation_overhead_p50_ms": round(_median(stops) - STOP_GRACE_S * 1000, 2),
        "memory_per_isolated_run": {
            "parallel_runs": parallel,
            "uss_kb_median": statistics.median(m["uss_kb"] for m in memory),
            "pss_kb_median": statistics.median(m["pss_kb"] for m in memory),
            "rss_kb_median": statistics.median(m["rss_kb"] for m in memory),
        },
    }


async def run(launches: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="shards-bench-isolation-"))
    services = Services(workdir)
    sink = await probe.Sink.open()
    results: dict[str, Any] = {"launches_each": launches}
    try:
        controller = await services.start_controller(str(workdir / "shards.db"), name="controller")
        [worker] = await services.start_workers([controller.address], 1, 8, sink.address)
        redis_url, _ = services.start_redis()
        services.start_celery_worker(redis_url, 2, sink.address)
        app = celery_side.make_app(redis_url)
        await celery_side.wait_ready(app, sink)
        async with AsyncClient(controller.address, timeout_s=60.0) as client:
            # Interleaved rounds, so a burst of load on the machine hits every side alike.
            sides: dict[str, list[float]] = {"thread": [], "isolated": [], "celery_prefork": []}
            await celery_side.measure_latency(app, sink, 10, "warmup")
            rounds = 4
            for _ in range(rounds):
                sides["thread"] += await _launch_latency(client, sink, "ping", launches // rounds)
                sides["isolated"] += await _launch_latency(client, sink, "iso", launches // rounds)
                sides["celery_prefork"] += await celery_side.measure_latency(
                    app, sink, launches // rounds, uuid.uuid4().hex[:6]
                )
            results["launch_to_code_start"] = {side: _summary(values) for side, values in sides.items()}
            results["isolated_over_thread_p50"] = round(
                _median(sides["isolated"]) / _median(sides["thread"]), 2
            )
            results["isolated_over_celery_p50"] = round(
                _median(sides["isolated"]) / _median(sides["celery_prefork"]), 2
            )
            worker_rss_before = worker.rss_bytes()
            results.update(await _stop_and_memory(client, sink, parallel=4, reps=3))
            results["worker_rss_mb"] = round(worker_rss_before / 2**20, 1)
    finally:
        services.stop_all()
        sink.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=40, help="launches per side (default 40)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.launches))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
