"""``shards launch``, ``stop``, ``runs``: runs, followed to their end when asked."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
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

from shards.aio import AsyncClient
from shards.cli.connection import client_command
from shards.cli.running import CliError, Commands
from shards.cli_render import format_duration, runs_table, state_change_line, state_text
from shards.errors import DeadlineExceeded, NotFound, Unavailable
from shards.models import ProcessRecord, Run
from shards.states import ProcessState

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
    return next((r for r in records.processes if r.process_id == process_id), None)


async def _launch(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    if not args.yes:
        _confirm_warning(await _find_record(client, args.scope, args.process), assume_yes=False)
    result = await client.launch_process(args.scope, args.process, timeout_s=args.time_limit)
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
    try:
        run = await client.wait_run(record.run_id, timeout_s=args.timeout)
    except DeadlineExceeded:
        raise CliError(
            f"{args.process} had not ended {args.timeout:g} s after the stop was asked "
            f"(run {record.run_id}); the stop goes on: shards runs {args.scope} {args.process}"
        ) from None
    duration = format_duration(run.ended_at - run.started_at) if run.ended_at and run.started_at else ""
    console.print(
        _describe_end(args.process, run.state, run.error, duration, run.progress.message),
        style=state_text(run.state).style,
        soft_wrap=True,
        markup=False,
    )
    return END_CODES.get(run.state, EXIT_FAILED)


async def _runs(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    runs = await client.list_runs(args.scope, args.process or "", limit=args.limit)
    what = f"{args.scope}/{args.process}" if args.process else args.scope
    if not runs:
        console.print(f"no runs in {what}")
        return 0
    console.print(runs_table(runs, title=f"runs in {what}, newest first"))
    return 0


def add_launch(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "launch", parents=[client], help="launch a process and print its run id", epilog=FOLLOW_EPILOG
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.add_argument("--follow", "-f", action="store_true", help="show its progress until the run ends")
    p.add_argument(
        "--yes", "-y", action="store_true", help="launch a process that has a warning without asking"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop the run if it is still going SECONDS after it started; it then ends failed, "
        "timed out (default: the process definition's timeout_s, if any; --timeout is the wait "
        "for the controller)",
    )
    p.set_defaults(handler=client_command(_launch))


def add_stop(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "stop", parents=[client], help="ask a running process to stop", epilog=FOLLOW_EPILOG
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.add_argument(
        "--wait", action="store_true", help="wait until the run has ended (at most --timeout seconds)"
    )
    p.set_defaults(handler=client_command(_stop))


def add_runs(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("runs", parents=[client], help="recent runs of a scope or of one process")
    p.add_argument("scope")
    p.add_argument("process", nargs="?")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    p.set_defaults(handler=client_command(_runs))
