"""``shards controller`` and ``shards worker``: run a service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import replace

from shards import _aio
from shards.cli.running import (
    Commands,
    StartupError,
    controllers,
    setup_logging,
    startup_error,
    wait_for_signal,
)

log = logging.getLogger("shards.cli")


def cmd_controller(args: argparse.Namespace) -> int:
    from shards_controller import collector
    from shards_controller.config import ControllerConfig
    from shards_controller.server import ControllerServer

    setup_logging(args.verbose, args.log_format)
    collector.tune()  # this process is the controller's own

    async def serve() -> int:
        # ControllerServer rather than run_controller: the CLI reports the bound
        # port (``--listen HOST:0``) in its ready line, which scripts wait for.
        try:
            config = ControllerConfig.from_env(
                listen=args.listen,
                store=args.store,
                advertise_address=args.advertise,
                metrics_listen=args.metrics_listen,
                authenticate_hook=args.authenticate_hook,
                authorize_hook=args.authorize_hook,
                run_retention_days=args.run_retention_days,
                run_keep_per_process=args.run_keep_per_process,
            )
            server = ControllerServer(config)
            await server.start()
        except Exception as error:  # whatever it is, one line and exit 2
            raise startup_error("controller", error) from None
        log.info("controller ready: listening on %s (store %s)", server.address, config.store)
        try:
            await wait_for_signal()
        finally:
            await server.stop()
        log.info("controller stopped")
        return 0

    return _aio.run(serve())


def cmd_worker(args: argparse.Namespace) -> int:
    from shards_worker.loading import AppLoadError, load_app
    from shards_worker.server import WorkerSecurity, WorkerServer

    setup_logging(args.verbose, args.log_format)
    try:
        app = load_app(args.app)
    except AppLoadError as error:
        raise StartupError(str(error)) from None
    if args.scopes:
        app = replace(app, scopes=_scope_patterns(args.scopes))
    addresses = controllers(args.controller)
    if args.capacity < 1:
        raise StartupError(f"--capacity must be at least 1, got {args.capacity}")

    async def serve() -> int:
        try:
            server = WorkerServer(
                app,
                addresses,
                listen=args.listen,
                advertise_address=args.advertise or "",
                capacity=args.capacity,
                worker_id=args.worker_id or "",
                security=WorkerSecurity.from_env(),  # SHARDS_WORKER_TOKEN, TLS files: see SECURITY.md
                metrics_listen=args.metrics_listen or "",
            )
            await server.start()
        except Exception as error:  # whatever it is, one line and exit 2
            raise startup_error("worker", error) from None
        log.info(
            "worker ready: %s listening on %s, capacity %d", server.worker_id, server.address, args.capacity
        )
        try:
            await wait_for_signal(unless=server.refused)
        finally:
            await server.stop(grace_s=args.grace)
        if server.refused.is_set():
            # Refused for good (another live worker has this id): one line, exit 2.
            print(f"error: {server.refusal}", file=sys.stderr)
            return 2
        log.info("worker stopped")
        return 0

    code = _aio.run(serve())
    if _threads_left(timeout_s=1.0):
        # Process code that ignores should_continue() would keep the
        # interpreter alive forever (its pool threads are joined at exit).
        log.warning("process code did not stop within %.1fs of the stop request; exiting anyway", args.grace)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1)
    return code


def _scope_patterns(value: str) -> tuple[str, ...]:
    from shards.errors import InvalidArgument
    from shards.validation import check_scope_pattern

    patterns = tuple(p.strip() for p in value.split(",") if p.strip())
    if not patterns:
        raise StartupError("--scopes needs at least one scope pattern")
    try:
        for pattern in patterns:
            check_scope_pattern(pattern)
    except InvalidArgument as error:
        raise StartupError(f"--scopes: {error.message}") from None
    return patterns


def _threads_left(timeout_s: float) -> int:
    """Non-daemon threads still alive after waiting up to ``timeout_s`` for them."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    main = threading.main_thread()
    return sum(1 for t in threading.enumerate() if t is not main and t.is_alive() and not t.daemon)


def _listen(value: str) -> str:
    from shards._metrics import parse_listen

    try:
        parse_listen(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def add_metrics_listen(p: argparse.ArgumentParser, env: str) -> None:
    p.add_argument(
        "--metrics-listen",
        type=_listen,
        default=os.environ.get(env) or None,
        metavar="HOST:PORT",
        help=f"serve Prometheus /metrics there (PORT alone: on 127.0.0.1; default ${env}, else off)",
    )


def add_controller(commands: Commands, service: argparse.ArgumentParser) -> None:
    p = commands.add_parser("controller", parents=[service], help="run a controller until SIGINT/SIGTERM")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where to listen (port 0: any free port; default 127.0.0.1:50051)",
    )
    p.add_argument(
        "--store", metavar="URI", help="mongodb://... or an SQLite file path (default var/shards.db)"
    )
    p.add_argument(
        "--advertise", metavar="HOST:PORT", help="the address workers and clients are told to dial"
    )
    add_metrics_listen(p, "SHARDS_METRICS_LISTEN")
    p.add_argument(
        "--authenticate-hook",
        metavar="MODULE:FUNCTION",
        help="authenticate(token) -> Principal | name | None, for your own users (SECURITY.md; "
        "default $SHARDS_AUTHENTICATE_HOOK)",
    )
    p.add_argument(
        "--authorize-hook",
        metavar="MODULE:FUNCTION",
        help="authorize(principal, scope_id, action) -> bool (default $SHARDS_AUTHORIZE_HOOK)",
    )
    p.add_argument(
        "--run-retention-days",
        type=float,
        metavar="DAYS",
        help="delete ended runs (and their logs) created more than DAYS ago "
        "(default $SHARDS_RUN_RETENTION_DAYS, else kept forever)",
    )
    p.add_argument(
        "--run-keep-per-process",
        type=int,
        metavar="N",
        help="keep only the newest N runs of each process, and their logs "
        "(default $SHARDS_RUN_KEEP_PER_PROCESS, else all)",
    )
    p.set_defaults(handler=cmd_controller)


def add_worker(commands: Commands, service: argparse.ArgumentParser, default_controller: str) -> None:
    p = commands.add_parser("worker", parents=[service], help="run a worker app until SIGINT/SIGTERM")
    p.add_argument(
        "app",
        metavar="MODULE:ATTR",
        help="a WorkerApp, a list of ProcessDefinition, or a callable making one",
    )
    # Set only when given here: the top-level parser holds the default (shards --controller X worker ...).
    p.add_argument("--controller", default=argparse.SUPPRESS, metavar="HOST:PORT[,HOST:PORT...]")
    p.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="default: a free loopback port"
    )
    p.add_argument("--advertise", metavar="HOST:PORT", help="the address the controller is told to dial")
    p.add_argument(
        "--capacity", type=int, default=4, metavar="N", help="top-level runs at a time (default 4)"
    )
    p.add_argument("--worker-id", metavar="ID", help="default: host-pid-random")
    p.add_argument(
        "--scopes",
        metavar="PATTERN[,PATTERN...]",
        help="the scopes served (fnmatch patterns such as tenant-*; default: the app's, usually *); "
        "a worker credential may serve only the scopes its policy entry allows",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on stop, how long running processes get to stop",
    )
    add_metrics_listen(p, "SHARDS_WORKER_METRICS_LISTEN")
    p.set_defaults(handler=cmd_worker)


def add_web(commands: Commands, service: argparse.ArgumentParser) -> None:
    # The web GUI lives in its own package (shards_web); it imports aiohttp only when it runs.
    from shards_web.cli import add_arguments, run

    p = commands.add_parser("web", parents=[service], help="serve the web GUI until SIGINT/SIGTERM")
    add_arguments(p)
    p.set_defaults(handler=run)
