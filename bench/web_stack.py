"""A controller (in this process) and a worker (a subprocess), for ``bench.web``:
``python -m bench.web_stack DIR``.

Prints ``stack ready: ADDRESS`` once the worker is registered, then writes the
watches open at the controller to ``DIR/watches`` every 0.05 s, as JSON: when
(``at``, epoch seconds), ``total`` and ``by_scope``. What the fan-out benchmark
checks is the count of its own scope: one, whatever the number of browsers. The
total is not that figure: the GUI server keeps a scope's watch for
``idle_watch_s`` (30 s) after its last browser left, so the previous run's scope
is still watched while the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.apps import make_app
from shards._aio import run
from shards_controller.config import ControllerConfig
from shards_controller.server import ControllerServer

#: The benchmarks' app (bench.apps), its datagrams to the discard port: ``hz200`` reports
#: its report times in its progress messages, which is all the fan-out reads.
APP = make_app("127.0.0.1:9")


async def main(directory: Path) -> None:
    # worker_timeout_s: defining 10,000 records holds the controller's loop for seconds on a
    # busy machine (a record is staged with dataclasses.replace, ~0.1 ms each), longer than
    # the default 3 s of heartbeat silence that makes a worker dead.
    config = ControllerConfig(listen="127.0.0.1:0", store=str(directory / "shards.db"), worker_timeout_s=30.0)
    server = ControllerServer(config)
    await server.start()
    await server.wait_leading(15)
    log = (directory / "worker.log").open("w")
    worker = subprocess.Popen(  # noqa: ASYNC220 (once, at start-up)
        [sys.executable, "-m", "shards.cli", "worker", "bench.web_stack:APP", "--controller", server.address],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    while not [w for w in server.controller.list_workers() if w.alive]:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited: {(directory / 'worker.log').read_text()[-2000:]}")
        await asyncio.sleep(0.1)
    print(f"stack ready: {server.address}", flush=True)
    watches, staged = directory / "watches", directory / "watches.tmp"
    hub = server.controller.hub
    try:
        while True:
            # The hub counts its watchers per scope only privately (no public figure by scope).
            by_scope = {scope: len(watchers) for scope, watchers in hub._by_scope.items()}
            figures = {"at": time.time(), "total": hub.watcher_count, "by_scope": by_scope}
            staged.write_text(json.dumps(figures))
            os.replace(staged, watches)  # whole: the reader never sees a half-written file
            await asyncio.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        log.close()
        await server.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run(main(Path(sys.argv[1])))
