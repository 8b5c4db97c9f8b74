"""``shards``: run the services and drive the controller from a shell.

Services (log to stderr, stop cleanly on SIGINT/SIGTERM)::

    shards controller --listen 127.0.0.1:50051 --store var/shards.db
    shards worker examples.sheep:app --controller 127.0.0.1:50051

Client commands (``--controller``, else $SHARDS_CONTROLLER, else 127.0.0.1:50051)::

    shards define demo
    shards launch demo count-sheep --follow
    shards ps demo --watch

A failed request prints ``error: <message>`` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.prompt import Confirm

from shards import _aio
from shards.aio import AsyncClient, settings_from_env
from shards.cli_render import (
    ProcessBoard,
    format_duration,
    make_console,
    process_table,
    runs_table,
    state_change_line,
    state_text,
    workers_table,
)
from shards.errors import NotFound, ShardsError, Unavailable
from shards.models import ProcessRecord, Run
from shards.states import ProcessState

log = logging.getLogger("shards.cli")

DEFAULT_CONTROLLER = "127.0.0.1:50051"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
INTERRUPTED = 130

# Exit codes of ``launch --follow`` and ``stop --wait``, by how the run ended.
EXIT_DONE = 0
EXIT_FAILED = 1  # failed or lost (and every error)
EXIT_STOPPED = 2
END_CODES = {
    ProcessState.DONE: EXIT_DONE,
    ProcessState.FAILED: EXIT_FAILED,
    ProcessState.LOST: EXIT_FAILED,
    ProcessState.STOPPED: EXIT_STOPPED,
}
FOLLOW_EPILOG = (
    "exit status: 0 the run ended done, 1 failed or lost (or an error), 2 stopped, 130 interrupted"
)


class CliError(Exception):
    """A usage problem found after parsing (printed as ``error: ...``, exit 1)."""


# ---------------------------------------------------------------- running


def _controllers(value: str) -> list[str]:
    addresses = [a.strip() for a in value.split(",") if a.strip()]
    if not addresses:
        raise CliError("--controller needs at least one HOST:PORT")
    return addresses


@contextlib.contextmanager
def _on_signals(callback: Callable[[], object]) -> Iterator[None]:
    """Call ``callback`` on SIGINT/SIGTERM while inside (where the platform allows it).

    Once outside, a second Ctrl-C interrupts whatever clean-up is under way.
    """
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, callback)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _run_async(work: Coroutine[Any, Any, int], *, on_signal: int = INTERRUPTED) -> int:
    """Run ``work``; SIGINT/SIGTERM cancel it and the command exits with ``on_signal``."""

    async def main() -> int:
        task = asyncio.ensure_future(work)
        with _on_signals(task.cancel):
            try:
                return await task
            except asyncio.CancelledError:
                return on_signal

    try:
        return _aio.run(main())
    except KeyboardInterrupt:
        return on_signal


async def _wait_for_signal() -> None:
    """Until SIGINT or SIGTERM."""
    # Not raced against server.wait_for_termination(): cancelling that wait
    # cancels grpc's own shutdown future, and the later server.stop() fails.
    stop = asyncio.Event()
    with _on_signals(stop.set):
        await stop.wait()
    log.info("stopping (signal received)")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr
    )


# ---------------------------------------------------------------- services


def cmd_controller(args: argparse.Namespace) -> int:
    from shards_controller.config import ControllerConfig
    from shards_controller.server import ControllerServer

    _setup_logging(args.verbose)
    config = ControllerConfig.from_env(listen=args.listen, store=args.store, advertise_address=args.advertise)

    async def serve() -> int:
        # ControllerServer rather than run_controller: the CLI reports the bound
        # port (``--listen HOST:0``) in its ready line, which scripts wait for.
        server = ControllerServer(config)
        try:
            await server.start()
        except OSError as error:
            raise CliError(f"cannot start the controller: {error}") from None
        log.info("controller ready: listening on %s (store %s)", server.address, config.store)
        try:
            await _wait_for_signal()
        finally:
            await server.stop()
        log.info("controller stopped")
        return 0

    return _aio.run(serve())


def cmd_worker(args: argparse.Namespace) -> int:
    from shards_worker.loading import AppLoadError, load_app
    from shards_worker.server import WorkerSecurity, WorkerServer

    _setup_logging(args.verbose)
    try:
        app = load_app(args.app)
    except AppLoadError as error:
        raise CliError(str(error)) from None
    controllers = _controllers(args.controller)
    if args.capacity < 1:
        raise CliError(f"--capacity must be at least 1, got {args.capacity}")

    async def serve() -> int:
        server = WorkerServer(
            app,
            controllers,
            listen=args.listen,
            advertise_address=args.advertise or "",
            capacity=args.capacity,
            worker_id=args.worker_id or "",
            security=WorkerSecurity.from_env(),  # SHARDS_WORKER_TOKEN, TLS files: see SECURITY.md
        )
        try:
            await server.start()
        except OSError as error:
            raise CliError(f"cannot start the worker: {error}") from None
        log.info(
            "worker ready: %s listening on %s, capacity %d", server.worker_id, server.address, args.capacity
        )
        try:
            await _wait_for_signal()
        finally:
            await server.stop(grace_s=args.grace)
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


def _threads_left(timeout_s: float) -> int:
    """Non-daemon threads still alive after waiting up to ``timeout_s`` for them."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    main = threading.main_thread()
    return sum(1 for t in threading.enumerate() if t is not main and t.is_alive() and not t.daemon)


# ---------------------------------------------------------------- client commands


def _client(args: argparse.Namespace) -> AsyncClient:
    # Token and TLS from SHARDS_TOKEN / SHARDS_TLS_* (see SECURITY.md); --controller wins.
    settings = settings_from_env()
    settings.pop("controller")
    return AsyncClient(
        _controllers(args.controller), timeout_s=args.timeout, retry_deadline_s=args.timeout, **settings
    )


def _client_command(
    body: Callable[[argparse.Namespace, AsyncClient, Console], Coroutine[Any, Any, int]],
    on_signal: int = INTERRUPTED,
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        console = make_console()

        async def work() -> int:
            client = _client(args)
            try:
                return await body(args, client, console)
            except Unavailable as error:
                raise Unavailable(
                    f"{error.message} (is a controller running at {args.controller}?)"
                ) from None
            finally:
                await client.close()

        return _run_async(work(), on_signal=on_signal)

    return run


async def _ps(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    if args.watch:
        return await _watch(args, client, console)
    records = await client.list_processes(args.scope, name_contains=args.name, max_detail_level=args.level)
    if not records:
        matching = " matching the filter" if args.name or args.level else ""
        console.print(
            f"no processes{matching} in scope {args.scope!r} (define them: shards define {args.scope})"
        )
        return 0
    console.print(process_table(records, title=f"scope {args.scope}"))
    return 0


async def _watch(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    board = ProcessBoard(title=f"scope {args.scope} (Ctrl-C to quit)")
    events = client.watch_processes(args.scope, name_contains=args.name, max_detail_level=args.level)
    if console.is_terminal:
        with Live(board, console=console, refresh_per_second=8):
            async for event in events:
                board.apply(event)
        return 0
    # Not a terminal: the table once, then a line per state change.
    async for event in events:
        was_synced = board.synced
        changed = board.apply(event)
        if board.synced and not was_synced:
            console.print(board.table())
        elif was_synced and changed is not None:
            console.print(state_change_line(changed), soft_wrap=True)
    return 0


def _confirm_warning(record: ProcessRecord | None, assume_yes: bool) -> None:
    if record is None or not record.warning or assume_yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            f"process {record.process_id!r} asks for confirmation ({record.warning}); "
            "pass --yes to launch it anyway"
        )
    if not Confirm.ask(f"[yellow]{escape(record.warning)}[/] Launch {record.process_id}?", default=False):
        raise CliError("not launched")


async def _find_record(client: AsyncClient, scope: str, process_id: str) -> ProcessRecord | None:
    """The record, defining the scope first if needed (as the launch would); None if unknown."""
    try:
        return await client.get_process(scope, process_id)
    except NotFound:
        pass
    try:
        records = await client.define_processes(scope, only_if_missing=True)
    except Unavailable:
        return None  # no worker to ask: the controller accepts the launch and a worker judges it later
    return next((r for r in records if r.process_id == process_id), None)


async def _launch(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    if not args.yes:
        _confirm_warning(await _find_record(client, args.scope, args.process), assume_yes=False)
    result = await client.launch_process(args.scope, args.process)
    print(result.run_id, flush=True)
    if not args.follow:
        return 0
    return await _follow(client, console, args.scope, args.process, result.run_id)


def _state_markup(state: ProcessState) -> str:
    style = state_text(state).style
    return f"[{style}]{state}[/]" if style else str(state)


def _describe_end(process_id: str, state: ProcessState, error: str, duration: str, message: str) -> str:
    text = f"{process_id} {state}"
    if duration:
        text += f" after {duration}"
    if error:
        text += f": {error}"
    elif message:
        text += f" ({message})"
    return text


async def _follow(client: AsyncClient, console: Console, scope: str, process_id: str, run_id: str) -> int:
    """A progress bar for one run until it ends; the exit code tells how it ended."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[message]}", markup=False),
        TimeElapsedColumn(),
    )
    ended: ProcessRecord | Run | None = None
    with Progress(*columns, console=console, transient=console.is_terminal) as bar:
        task = bar.add_task(process_id, total=1.0, message="")
        last_state: ProcessState | None = None
        async for event in client.watch_processes(scope, name_contains=process_id):
            record = event.process
            if record is None or record.process_id != process_id:
                continue
            if record.run_id != run_id:
                # Another run has begun since (ours ended while we were away).
                run = await client.get_run(run_id)
                if run.state.is_end:
                    ended = run
                    break
                continue
            bar.update(
                task,
                completed=record.progress.rate,
                message=record.progress.message,
                description=f"{process_id} {_state_markup(record.state)}",
            )
            if record.state is not last_state and not console.is_terminal and not record.state.is_end:
                bar.console.print(state_change_line(record), soft_wrap=True)
            last_state = record.state
            if record.state.is_end:
                ended = record
                break
    if ended is None:  # the stream ended without an end state (cannot happen with resume)
        raise CliError(f"the watch of {process_id!r} ended before the run did")
    if isinstance(ended, Run):
        duration = (
            format_duration(ended.ended_at - ended.started_at) if ended.ended_at and ended.started_at else ""
        )
    else:
        duration = format_duration(ended.duration)
    line = _describe_end(process_id, ended.state, ended.error, duration, ended.progress.message)
    style = state_text(ended.state).style
    console.print(line, style=style, soft_wrap=True, markup=False)
    return END_CODES.get(ended.state, EXIT_FAILED)


async def _stop(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    record = await client.stop_process(args.scope, args.process)
    console.print(f"{args.process}: ", state_text(record.state), sep="", soft_wrap=True)
    if not args.wait:
        return 0
    run = await client.wait_run(record.run_id)
    duration = format_duration(run.ended_at - run.started_at) if run.ended_at and run.started_at else ""
    console.print(
        _describe_end(args.process, run.state, run.error, duration, run.progress.message),
        style=state_text(run.state).style,
        soft_wrap=True,
        markup=False,
    )
    return END_CODES.get(run.state, EXIT_FAILED)


async def _dismiss(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    record = await client.dismiss_process_messages(args.scope, args.process)
    console.print(
        f"{args.process}: messages dismissed (", state_text(record.state), ")", sep="", soft_wrap=True
    )
    return 0


async def _define(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    records = await client.define_processes(
        args.scope, only_if_missing=args.only_if_missing, clean=args.clean
    )
    console.print(process_table(records, title=f"scope {args.scope}: {len(records)} processes defined"))
    return 0


async def _purge(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    purged = await client.purge_processes(args.scope)
    console.print(
        f"purged {purged} process{'es' if purged != 1 else ''} from scope {args.scope!r}", soft_wrap=True
    )
    return 0


async def _workers(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    workers = await client.list_workers()
    if not workers:
        console.print("no workers registered")
        return 0
    console.print(workers_table(workers, title=f"{len(workers)} worker{'s' if len(workers) != 1 else ''}"))
    return 0


async def _runs(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    runs = await client.list_runs(args.scope, args.process or "", limit=args.limit)
    what = f"{args.scope}/{args.process}" if args.process else args.scope
    if not runs:
        console.print(f"no runs in {what}")
        return 0
    console.print(runs_table(runs, title=f"runs in {what}, newest first"))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shards",
        description="Shards Process Manager: run, stop and watch named background processes.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("-v", "--verbose", action="store_true", help="log debug messages")

    default_controller = os.environ.get("SHARDS_CONTROLLER") or DEFAULT_CONTROLLER
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--controller",
        default=default_controller,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"controller address(es); the leader is found among them (default: {default_controller}, "
        "from $SHARDS_CONTROLLER when set)",
    )
    client.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on the controller after this long",
    )

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
    p.set_defaults(handler=cmd_controller)

    p = commands.add_parser("worker", parents=[service], help="run a worker app until SIGINT/SIGTERM")
    p.add_argument(
        "app",
        metavar="MODULE:ATTR",
        help="a WorkerApp, a list of ProcessDefinition, or a callable making one",
    )
    p.add_argument("--controller", default=default_controller, metavar="HOST:PORT[,HOST:PORT...]")
    p.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="default: a free loopback port"
    )
    p.add_argument("--advertise", metavar="HOST:PORT", help="the address the controller is told to dial")
    p.add_argument(
        "--capacity", type=int, default=4, metavar="N", help="top-level runs at a time (default 4)"
    )
    p.add_argument("--worker-id", metavar="ID", help="default: host-pid-random")
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on stop, how long running processes get to stop",
    )
    p.set_defaults(handler=cmd_worker)

    p = commands.add_parser("ps", parents=[client], help="the processes of a scope")
    p.add_argument("scope")
    p.add_argument("--watch", "-w", action="store_true", help="a live table until Ctrl-C")
    p.add_argument("--name", default="", metavar="TEXT", help="only processes whose id or name contains TEXT")
    p.add_argument("--level", type=int, default=0, metavar="N", help="only detail levels up to N (1-4)")
    p.set_defaults(handler=_client_command(_ps, on_signal=0))

    p = commands.add_parser(
        "launch", parents=[client], help="launch a process and print its run id", epilog=FOLLOW_EPILOG
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.add_argument("--follow", "-f", action="store_true", help="show its progress until the run ends")
    p.add_argument(
        "--yes", "-y", action="store_true", help="launch a process that has a warning without asking"
    )
    p.set_defaults(handler=_client_command(_launch))

    p = commands.add_parser(
        "stop", parents=[client], help="ask a running process to stop", epilog=FOLLOW_EPILOG
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.add_argument("--wait", action="store_true", help="wait until the run has ended")
    p.set_defaults(handler=_client_command(_stop))

    p = commands.add_parser(
        "dismiss", parents=[client], help="clear the error and progress of an ended process"
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.set_defaults(handler=_client_command(_dismiss))

    p = commands.add_parser("define", parents=[client], help="(re)define a scope's processes from a worker")
    p.add_argument("scope")
    p.add_argument(
        "--clean", action="store_true", help="remove records of processes the worker no longer has"
    )
    p.add_argument(
        "--only-if-missing", action="store_true", help="do nothing if the scope is already defined"
    )
    p.set_defaults(handler=_client_command(_define))

    p = commands.add_parser("purge", parents=[client], help="remove every process record of a scope")
    p.add_argument("scope")
    p.set_defaults(handler=_client_command(_purge))

    p = commands.add_parser("workers", parents=[client], help="the registered workers")
    p.set_defaults(handler=_client_command(_workers))

    p = commands.add_parser("runs", parents=[client], help="recent runs of a scope or of one process")
    p.add_argument("scope")
    p.add_argument("process", nargs="?")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    p.set_defaults(handler=_client_command(_runs))
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``shards`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ShardsError, CliError) as error:
        message = error.message if isinstance(error, ShardsError) else str(error)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
