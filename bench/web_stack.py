"""A controller and a worker in one process, for ``bench.web``: ``python -m bench.web_stack DIR``.

Prints ``stack ready: ADDRESS`` once the worker is registered, then writes the
number of watches open at the controller to ``DIR/watches`` every 0.2 s (what
the fan-out benchmark checks: one, whatever the number of browsers).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from bench.apps import make_app
from shards._aio import run
from shards_controller.config import ControllerConfig
from shards_controller.server import ControllerServer
from shards_worker import WorkerServer


async def main(directory: Path) -> None:
    config = ControllerConfig(listen="127.0.0.1:0", store=str(directory / "shards.db"))
    server = ControllerServer(config)
    await server.start()
    await server.wait_leading(15)
    worker = WorkerServer(make_app("127.0.0.1:9"), server.address, capacity=4)
    await worker.start()
    await asyncio.wait_for(worker.registered.wait(), 15)
    print(f"stack ready: {server.address}", flush=True)
    watches = directory / "watches"
    try:
        while True:
            watches.write_text(str(server.controller.hub.watcher_count))
            await asyncio.sleep(0.2)
    finally:
        await worker.stop(1.0)
        await server.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run(main(Path(sys.argv[1])))
