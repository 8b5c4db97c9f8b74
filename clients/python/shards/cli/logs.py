"""``shards logs``: a run's whole log (a run id, or a process's last run), followed live when asked."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from shards.aio import AsyncClient
from shards.cli.connection import client_command
from shards.cli.running import CliError, Commands
from shards.errors import InvalidArgument

PAGE_LINES = 10_000


async def _run_id(args: argparse.Namespace, client: AsyncClient) -> str:
    if args.process is None:
        return str(args.target)
    record = await client.get_process(args.target, args.process)
    if not record.run_id:
        raise CliError(f"{args.target}/{args.process} has never run: no log to show")
    return record.run_id


def _write(lines: tuple[str, ...]) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


async def _logs(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    if args.offset is not None and args.offset < 0:
        raise InvalidArgument(f"--offset must be 0 or more, got {args.offset}")
    if args.tail is not None and args.tail < 0:
        raise InvalidArgument(f"--tail must be 0 or more, got {args.tail}")
    run_id = await _run_id(args, client)
    errors = Console(stderr=True)
    first = await client.get_run_log(run_id, 0, 1)
    offset = args.offset if args.offset is not None else first.dropped
    if args.tail is not None:
        offset = max(first.dropped, first.end_offset - args.tail)
    if first.dropped and offset <= first.dropped:
        errors.print(
            f"({first.dropped} older lines were dropped: the log passed the controller's cap)",
            style="dim",
            markup=False,
        )
    if args.follow:
        async for page in client.follow_run_log(run_id, offset):
            _write(page.lines)
        run = await client.get_run(run_id)
        errors.print(f"run {run_id} ended {run.state}", style="dim", markup=False)
        return 0
    while True:
        page = await client.get_run_log(run_id, offset, PAGE_LINES)
        _write(page.lines)
        offset = page.next_offset
        if not page.lines or offset >= page.end_offset:
            return 0


def add_logs(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "logs",
        parents=[client],
        help="a run's whole log: shards logs RUN_ID, or shards logs SCOPE PROCESS for its last run",
    )
    p.add_argument("target", metavar="RUN_ID|SCOPE")
    p.add_argument("process", nargs="?", metavar="PROCESS", help="with a scope: that process's last run")
    p.add_argument("--follow", "-f", action="store_true", help="then print new lines until the run ends")
    p.add_argument("--offset", type=int, metavar="N", help="from the line at offset N (0: the first)")
    p.add_argument(
        "--tail", type=int, metavar="N", help="only the last N lines (then new ones with --follow)"
    )
    p.set_defaults(handler=client_command(_logs))
