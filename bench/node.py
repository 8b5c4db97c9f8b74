"""Entry point of the service subprocesses the harness starts (one role per process).

    python -m bench.node controller --listen 127.0.0.1:PORT --store PATH_OR_URI [--id ID]
    python -m bench.node worker --controller A[,B] --listen 127.0.0.1:PORT --capacity N --sink HOST:PORT

Each runs the product's own ``run_controller`` / ``run_worker`` with its
default settings, in a process of its own (its own GIL), until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from shards import _aio


def _serve(work: Coroutine[Any, Any, None]) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # where a stuck node waits
        with contextlib.suppress(asyncio.CancelledError):
            await task

    _aio.run(main())  # the loop the product's CLI runs on


def _dump_tasks() -> None:
    """Log every task of the loop with where it waits (``kill -USR1`` a node that seems stuck)."""
    for task in asyncio.all_tasks():
        frames: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(frames) < 20:  # down the chain of awaits
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                frames.append(type(awaited).__name__)
                break
            code = frame.f_code
            frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        logging.getLogger("bench.node").warning("task %s: %s", task.get_name(), " -> ".join(frames))


def controller(args: argparse.Namespace) -> None:
    from shards_controller.config import ControllerConfig
    from shards_controller.server import run_controller

    config = ControllerConfig(
        listen=args.listen, store=args.store, controller_id=args.id, metrics_listen=args.metrics_listen
    )
    _serve(run_controller(config))


def worker(args: argparse.Namespace) -> None:
    from bench.apps import make_app
    from shards_worker import run_worker

    app = make_app(args.sink)
    controllers = [a for a in args.controller.split(",") if a]
    _serve(
        run_worker(
            app,
            controllers,
            capacity=args.capacity,
            listen=args.listen,
            worker_id=args.id,
            metrics_listen=args.metrics_listen,
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.node")
    roles = parser.add_subparsers(dest="role", required=True)
    p = roles.add_parser("controller")
    p.add_argument("--listen", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--metrics-listen", default="")
    p.set_defaults(run=controller)
    p = roles.add_parser("worker")
    p.add_argument("--controller", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--capacity", type=int, default=16)
    p.add_argument("--sink", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--metrics-listen", default="")
    p.set_defaults(run=worker)
    args = parser.parse_args(argv)
    # BENCH_LOG_LEVEL=INFO shows leadership and workers in the logs (``--keep-logs``).
    level = os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
