"""``python -m bench.commit_path [--kind mongodb] [--launches 2000] [--reps 3]``: the group
commits behind sustained launches, on one stack alone.

It runs the bench's sustained scenario (``scenarios.throughput_rep``: distinct processes, 64
launches in flight, 2 workers of 16 slots) on one store (``mongodb``: FerretDB on PostgreSQL;
``mongodb-sqlite``; ``embedded``; ``memory``), with the controller's Prometheus metrics on, and
prints for each repetition the launches a second, the cores each part used, and what the
controller's own metrics say of its commits meanwhile: how many, their mean duration, and the
changes each carried (``shards_commit_duration_seconds``, ``shards_commit_batch_size``). Commits
run one after the other, so their count times their mean is the time they held the launches.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import urllib.request
from pathlib import Path

from bench import probe, scenarios
from bench.mongo_side import BACKEND
from bench.scenarios import Bench, Settings
from bench.services import Services, free_port
from shards import AsyncClient

METRICS = ("shards_commit_duration_seconds", "shards_commit_batch_size")


def commit_metrics(port: int) -> dict[str, float]:
    """The ``_sum`` and ``_count`` of the commit histograms, from the controller's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    figures = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(METRICS) and name.endswith(("_sum", "_count")):
            figures[name] = float(value)
    return figures


async def measure(kind: str, launches: int, reps: int, workdir: Path, capacity: int = 16) -> None:
    services = Services(workdir)
    sink = await probe.Sink.open()
    try:
        bench = Bench(services, sink, Settings(), log=print)
        if kind in BACKEND:
            bench.mongodb_uris[kind] = services.start_ferretdb(BACKEND[kind])
        port = free_port()
        controller = await services.start_controller(
            bench.store_uri(kind, "commits"),
            name="controller",
            extra=("--metrics-listen", f"127.0.0.1:{port}"),
        )
        workers = await services.start_workers(
            [controller.address], 2, capacity, sink.address, prefix="worker"
        )
        async with AsyncClient(controller.address, timeout_s=120.0) as client:
            target = scenarios.Stack(kind, controller, workers, client)
            await scenarios.throughput_rep(bench, target, 500, 64)  # warm-up
            for rep in range(reps):
                before = commit_metrics(port)
                result = await scenarios.throughput_rep(bench, target, launches, 64)
                after = commit_metrics(port)
                delta = {name: after[name] - before.get(name, 0.0) for name in after}
                commits = delta["shards_commit_duration_seconds_count"]
                mean_ms = 1000 * delta["shards_commit_duration_seconds_sum"] / commits
                changes = delta["shards_commit_batch_size_sum"] / commits
                print(
                    f"rep {rep + 1}/{reps}: {result['started_per_s']:,.0f} launches/s "
                    f"(accepted {result['accepted_per_s']:,.0f}/s); cores: controller "
                    f"{result['controller_cpu']:.2f}, workers {result['workers_cpu']:.2f}, "
                    f"harness {result['harness_cpu']:.2f}, store servers "
                    f"{result['store_servers_cpu']:.2f}; {commits:.0f} commits of {changes:.1f} changes, "
                    f"{mean_ms:.2f} ms each ({commits * mean_ms / 1000:.1f} s in all)",
                    flush=True,
                )
    finally:
        sink.close()
        services.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_path", description=__doc__)
    parser.add_argument(
        "--kind", default="mongodb", choices=["mongodb", "mongodb-sqlite", "embedded", "memory"]
    )
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=16, help="slots of each of the 2 workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shards-commit-path-") as workdir:
        asyncio.run(measure(args.kind, args.launches, args.reps, Path(workdir), args.capacity))


if __name__ == "__main__":
    main()
