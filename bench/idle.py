"""``python -m bench.idle [--records 10000,100000] [--seconds 5]``: what a leader costs at rest.

A controller on the embedded store with one worker, a scope of ``records`` processes defined and
nothing running: its CPU over ``seconds`` seconds, as a share of a core. At rest it should cost
next to nothing at any size; a loop that visits every record on a timer shows here as a share
that grows with the records (the schedules' tick, ten times a second, did before the ninth
session's index of scheduled records).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench import probe
from bench.services import Services
from shards import AsyncClient


async def idle_share(records: int, seconds: float, workdir: Path) -> float:
    services = Services(workdir)
    sink = await probe.Sink.open()
    try:
        controller = await services.start_controller(str(workdir / f"idle-{records}.db"), name="idle")
        await services.start_workers([controller.address], 1, 4, sink.address, prefix="idle-worker")
        async with AsyncClient(controller.address, timeout_s=120.0) as client:
            await client.define_processes(f"ping.{records}.idle")
            await asyncio.sleep(1.0)  # the define's own work (its write, the watchers) settles
            before, began = controller.cpu_seconds(), time.monotonic()
            await asyncio.sleep(seconds)  # the measurement: the controller left alone
            return (controller.cpu_seconds() - before) / (time.monotonic() - began)
    finally:
        sink.close()
        services.stop_all()


async def measure(sizes: list[int], seconds: float, workdir: Path) -> None:
    for records in sizes:
        share = await idle_share(records, seconds, workdir)
        print(f"{records:,} records at rest: controller {share:.3f} of a core", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--records", default="1000,10000,100000")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    sizes = [int(size) for size in args.records.split(",")]
    with tempfile.TemporaryDirectory(prefix="shards-idle-") as workdir:
        asyncio.run(measure(sizes, args.seconds, Path(workdir)))


if __name__ == "__main__":
    main()
