"""Whole run logs' costs, for ``python -m bench.observe`` (``--only logs`` for these alone).

On one stack (a controller on the embedded store, 2 workers, as subprocesses):

1. **A burst of 100,000 lines.** A run calls ``context.log`` 100,000 times in a
   tight loop (``bench.apps``' ``log-burst``) and times it, then the same loop
   on ``context.log`` as it was when only a tail was kept (a method appending
   to a bounded deque): the code's cost. End to end: from the loop's first call to the run's
   end, which the controller commits only once every line is stored, hence
   lines per second one run can log and have stored (the worker ships at most
   10,000 lines per run every 50 ms: 200,000 lines/s at most). The
   controller's CPU over that time, per 1,000 lines.
2. **Other runs during the burst.** Launches of other processes, one at a time
   (each waits for its code to start), for 1.5 s from the burst's launch, and
   the same with no burst, interleaved rep by rep: launch -> code start p50
   and p99 of each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench import stats
from bench.apps import BURST_LINES, burst_line, start_tag
from bench.scenarios import Bench, Stack, cpu_since

WINDOW_S = 1.5


async def _burst(bench: Bench, target: Stack) -> dict[str, float]:
    scope_id = f"hz.0.burst{uuid.uuid4().hex[:6]}"
    result = bench.sink.expect(f"log-burst:{scope_id}")
    cpu_before = [s.cpu_seconds() for s in target.processes]
    launched = await target.client.launch_process(scope_id, "log-burst")
    begun, loop_ns, baseline_ns = (int(v) for v in await asyncio.wait_for(result, 120))
    await target.client.wait_run(launched.run_id, 120)
    ended_ns = time.time_ns()
    cpu = cpu_since(target, cpu_before)
    stored: list[str] = []
    while len(stored) < BURST_LINES:
        page = await target.client.get_run_log(launched.run_id, len(stored), 10_000)
        assert page.lines and page.dropped == 0, (page.end_offset, page.dropped)
        stored.extend(page.lines)
    expected = [burst_line(n) for n in range(BURST_LINES)]
    wrong = [n for n, (got, want) in enumerate(zip(stored, expected, strict=True)) if got != want]
    assert not wrong, (
        f"{len(wrong)} lines of the burst are missing, from offset {wrong[0]}: {stored[wrong[0]]!r}"
    )
    seconds = (ended_ns - begun) / 1e9
    return {
        "loop_ms": loop_ns / 1e6,
        "baseline_loop_ms": baseline_ns / 1e6,
        "ns_per_call": loop_ns / BURST_LINES,
        "end_to_end_s": seconds,
        "lines_per_s": BURST_LINES / seconds,
        "controller_cpu_ms_per_1000_lines": cpu[0] / (BURST_LINES / 1000) * 1e3,
        "workers_cpu_ms_per_1000_lines": sum(cpu[1:]) / (BURST_LINES / 1000) * 1e3,
    }


async def _launch_latencies(bench: Bench, target: Stack, seconds: float) -> list[float]:
    """Launch -> code start of one process after another, for ``seconds``."""
    scope_id = f"ping.2000.lat{uuid.uuid4().hex[:6]}"
    client = target.client
    await client.define_processes(scope_id)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        started = bench.sink.expect(start_tag(scope_id, f"p{n}"))
        sent = time.time_ns()
        await client.launch_process(scope_id, f"p{n}")
        (code_started, *_) = await asyncio.wait_for(started, 30)
        latencies.append((int(code_started) - sent) / 1e6)
        n += 1
    return latencies


async def _during_burst(bench: Bench, target: Stack) -> list[float]:
    scope_id = f"hz.0.busy{uuid.uuid4().hex[:6]}"
    burst = await target.client.launch_process(scope_id, "log-burst")
    latencies = await _launch_latencies(bench, target, WINDOW_S)
    await target.client.wait_run(burst.run_id, 120)
    return latencies


async def run_log_costs(bench: Bench, target: Stack, reps: int) -> dict[str, Any]:
    bursts = []
    quiet: list[float] = []
    busy: list[float] = []
    for rep in range(reps):
        bursts.append(await _burst(bench, target))
        burst = bursts[-1]
        bench.log(
            f"rep {rep + 1} burst: loop {burst['loop_ms']:.1f} ms "
            f"(tail-only log {burst['baseline_loop_ms']:.1f}), "
            f"{burst['lines_per_s']:.0f} lines/s end to end, controller "
            f"{burst['controller_cpu_ms_per_1000_lines']:.2f} ms CPU per 1,000 lines"
        )
        sides = (("quiet", quiet), ("busy", busy)) if rep % 2 == 0 else (("busy", busy), ("quiet", quiet))
        for side, into in sides:
            figures = (
                await _launch_latencies(bench, target, WINDOW_S)
                if side == "quiet"
                else await _during_burst(bench, target)
            )
            into.extend(figures)
            bench.log(
                f"rep {rep + 1} launches {side}: p50 {stats.median(figures):.2f} ms over {len(figures)}"
            )

    def median(key: str) -> float:
        return stats.median([b[key] for b in bursts])

    return {
        "burst_lines": BURST_LINES,
        "loop_ms": median("loop_ms"),
        "baseline_loop_ms": median("baseline_loop_ms"),
        "ns_per_call": median("ns_per_call"),
        "lines_per_s": median("lines_per_s"),
        "end_to_end_s": median("end_to_end_s"),
        "controller_cpu_ms_per_1000_lines": median("controller_cpu_ms_per_1000_lines"),
        "workers_cpu_ms_per_1000_lines": median("workers_cpu_ms_per_1000_lines"),
        "launch_ms_quiet": {"p50": stats.median(quiet), "p99": stats.percentile(quiet, 99), "n": len(quiet)},
        "launch_ms_during_burst": {
            "p50": stats.median(busy),
            "p99": stats.percentile(busy, 99),
            "n": len(busy),
        },
        "reps": bursts,
    }


def print_log_costs(figures: dict[str, Any]) -> None:
    quiet, busy = figures["launch_ms_quiet"], figures["launch_ms_during_burst"]
    print(
        f"100,000-line burst:        loop {figures['loop_ms']:.1f} ms "
        f"({figures['ns_per_call']:.0f} ns per line; "
        f"the tail-only context.log of before: {figures['baseline_loop_ms']:.1f} ms)"
    )
    print(
        f"one run's lines, stored:   {figures['lines_per_s']:.0f} lines/s end to end "
        f"({figures['end_to_end_s']:.2f} s for 100,000)"
    )
    print(
        f"CPU per 1,000 lines:       controller {figures['controller_cpu_ms_per_1000_lines']:.2f} ms, "
        f"workers {figures['workers_cpu_ms_per_1000_lines']:.2f} ms"
    )
    print(
        f"launch -> start:           quiet p50 {quiet['p50']:.2f} ms p99 {quiet['p99']:.2f} ms "
        f"(n {quiet['n']}); "
        f"during a burst p50 {busy['p50']:.2f} ms p99 {busy['p99']:.2f} ms (n {busy['n']})"
    )
