"""Whole run logs' costs, for ``python -m bench.observe`` (``--only logs`` for these alone).

On one stack (a controller on the embedded store, 2 workers, as subprocesses):

1. **A burst of 100,000 lines.** A run calls ``context.log`` 100,000 times in a
   tight loop (``bench.apps``' ``log-burst``) and times it, then the same loop
   on ``context.log`` as it was when only a tail was kept (a method appending
   to a bounded deque): the code's cost. End to end: from the loop's first call to the run's
   end, which the controller commits only once every line is stored, hence
   lines per second one run can log and have stored (the worker ships at most
   2,000 lines per run every 10 ms while it has more: 200,000 lines/s at most). The
   controller's CPU over that time, per 1,000 lines.
2. **Other runs during the burst.** Launches of other processes, one at a time
   (each waits for its code to start), for 1.5 s from the burst's launch; the
   same during the burst's CPU twin (``cpu-twin``: the same code, building the
   same lines, on the tail-only log: nothing shipped), and with nothing else
   running, the three in turn rep by rep: launch -> code start p50 and p99 of
   each. The burst against its twin is what shipping and storing the lines
   costs other runs; the twin against quiet is a CPU-bound thread's cost to a
   Python worker (the GIL), whatever it does.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

from bench import stats
from bench.apps import BURST_LINES, burst_line, start_tag
from bench.scenarios import Bench, Stack, cpu_since
from bench.services import ROOT

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


async def _pings(target: Stack) -> str:
    """A new scope of 2,000 processes to launch (defined first: a define is a long turn of its own)."""
    scope_id = f"ping.2000.lat{uuid.uuid4().hex[:6]}"
    await target.client.define_processes(scope_id)
    return scope_id


async def _launch_latencies(
    bench: Bench, target: Stack, scope_id: str, seconds: float
) -> list[tuple[float, str]]:
    """Launch -> code start (ms) of one process of ``scope_id`` after another, for ``seconds``, with
    each run's id."""
    client = target.client
    latencies: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        started = bench.sink.expect(start_tag(scope_id, f"p{n}"))
        sent = time.time_ns()
        launched = await client.launch_process(scope_id, f"p{n}")
        (code_started, *_) = await asyncio.wait_for(started, 30)
        latencies.append(((int(code_started) - sent) / 1e6, launched.run_id))
        n += 1
    return latencies


async def _during(
    bench: Bench, target: Stack, process_id: str, hog: tuple[float, float] | None = None
) -> tuple[list[float], list[float]]:
    """Launch latencies while a run of ``process_id`` (the burst, or its CPU twin) runs: of the
    runs its worker took, and of those the other worker took (what the controller alone adds).
    ``hog``: (seconds, CPU seconds) burned meanwhile by a process of its own (``bench.hog``)."""
    scope_id = f"hz.0.busy{uuid.uuid4().hex[:6]}"
    pings = await _pings(target)
    burner = None
    if hog is not None:
        burner = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.hog", f"{hog[0]:.3f}", f"{hog[1]:.3f}", cwd=ROOT
        )
    busy = await target.client.launch_process(scope_id, process_id)
    latencies = await _launch_latencies(bench, target, pings, WINDOW_S)
    if burner is not None:
        await burner.wait()
    worker_id = (await target.client.wait_run(busy.run_id, 120)).worker_id
    same: list[float] = []
    other: list[float] = []
    for latency, run_id in latencies:
        run = await target.client.get_run(run_id)
        (same if run.worker_id == worker_id else other).append(latency)
    return same, other


def _spread(figures: list[float]) -> dict[str, float]:
    return {"p50": stats.median(figures), "p99": stats.percentile(figures, 99), "n": len(figures)}


async def run_log_costs(bench: Bench, target: Stack, reps: int) -> dict[str, Any]:
    bursts = []
    sides: dict[str, list[float]] = {
        "quiet": [],
        "twin": [],
        "twin, other worker": [],
        "floor": [],
        "floor, other worker": [],
        "burst": [],
        "burst, other worker": [],
    }
    for rep in range(reps):
        bursts.append(await _burst(bench, target))
        burst = bursts[-1]
        bench.log(
            f"rep {rep + 1} burst: loop {burst['loop_ms']:.1f} ms "
            f"(tail-only log {burst['baseline_loop_ms']:.1f}), "
            f"{burst['lines_per_s']:.0f} lines/s end to end, controller "
            f"{burst['controller_cpu_ms_per_1000_lines']:.2f} ms CPU per 1,000 lines"
        )
        # The floor: the twin, and the CPU this burst's shipping and storing took (the
        # services' CPU but for the code's two timed loops) burned by a process of its own.
        shipping_cpu_s = (
            (burst["controller_cpu_ms_per_1000_lines"] + burst["workers_cpu_ms_per_1000_lines"])
            * (BURST_LINES / 1000)
            - burst["loop_ms"]
            - burst["baseline_loop_ms"]
        ) / 1e3
        order = ["quiet", "twin", "floor", "burst"]
        for side in order[rep % 4 :] + order[: rep % 4]:  # each side first in turn
            if side == "quiet":
                quiet = await _launch_latencies(bench, target, await _pings(target), WINDOW_S)
                figures = {"quiet": [latency for latency, _ in quiet]}
            else:
                same, other = await _during(
                    bench,
                    target,
                    "log-burst" if side == "burst" else "cpu-twin",
                    (burst["end_to_end_s"], shipping_cpu_s) if side == "floor" else None,
                )
                figures = {side: same, f"{side}, other worker": other}
            for name, latencies in figures.items():
                sides[name].extend(latencies)
                if latencies:
                    bench.log(
                        f"rep {rep + 1} launches {name}: p50 {stats.median(latencies):.2f} ms "
                        f"p99 {stats.percentile(latencies, 99):.2f} ms over {len(latencies)}"
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
        "launch_ms_quiet": _spread(sides["quiet"]),
        "launch_ms_during_cpu_twin": _spread(sides["twin"]),
        "launch_ms_during_cpu_twin_other_worker": _spread(sides["twin, other worker"]),
        "launch_ms_during_floor": _spread(sides["floor"]),
        "launch_ms_during_floor_other_worker": _spread(sides["floor, other worker"]),
        "launch_ms_during_burst": _spread(sides["burst"]),
        "launch_ms_during_burst_other_worker": _spread(sides["burst, other worker"]),
        "reps": bursts,
    }


def print_log_costs(figures: dict[str, Any]) -> None:
    quiet, twin = figures["launch_ms_quiet"], figures["launch_ms_during_cpu_twin"]
    busy = figures["launch_ms_during_burst"]
    twin_other = figures["launch_ms_during_cpu_twin_other_worker"]
    busy_other = figures["launch_ms_during_burst_other_worker"]
    floor, floor_other = figures["launch_ms_during_floor"], figures["launch_ms_during_floor_other_worker"]
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
        f"(n {quiet['n']})"
    )
    for where, twin_side, floor_side, busy_side in (
        ("on the busy run's worker", twin, floor, busy),
        ("on the other worker", twin_other, floor_other, busy_other),
    ):
        print(f"  {where}:")
        print(
            f"    during the burst's twin: p50 {twin_side['p50']:.2f} ms p99 {twin_side['p99']:.2f} ms "
            f"(n {twin_side['n']}; the same code and CPU, no line shipped)"
        )
        print(
            f"    twin + the floor:        p50 {floor_side['p50']:.2f} ms p99 {floor_side['p99']:.2f} ms "
            f"(n {floor_side['n']}; the burst's shipping CPU burned by another process)"
        )
        print(
            f"    during a burst:          p50 {busy_side['p50']:.2f} ms p99 {busy_side['p99']:.2f} ms "
            f"(n {busy_side['n']}); p50 {busy_side['p50'] / floor_side['p50']:.2f}x, "
            f"p99 {busy_side['p99'] / floor_side['p99']:.2f}x the floor's"
        )
