"""``shards ps``, ``define``, ``purge``, ``dismiss``: the processes of a scope."""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console
from rich.live import Live

from shards.aio import AsyncClient
from shards.cli.connection import client_command
from shards.cli.running import CliError, Commands
from shards.cli_plain import PLAIN_FROM, plain_process_table
from shards.cli_render import ProcessBoard, process_table, state_change_line, state_text
from shards.models import ProcessRecord


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
    _print_table(console, records, f"scope {args.scope}")
    return 0


def _print_table(console: Console, records: list[ProcessRecord], title: str) -> None:
    if len(records) >= PLAIN_FROM:
        # rich's layout takes seconds for thousands of rows: the same table as plain text.
        console.file.write(plain_process_table(records, title=title))
    else:
        console.print(process_table(records, title=title))


async def _watch(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    board = ProcessBoard(title=f"scope {args.scope} (Ctrl-C to quit)")
    events = client.watch_processes(args.scope, name_contains=args.name, max_detail_level=args.level)
    try:
        # --timeout bounds the wait for the first snapshot (a controller that is
        # down must not leave a silent, empty screen); after it, the watch
        # resumes by itself across restarts until Ctrl-C.
        async with asyncio.timeout(args.timeout) as first_snapshot:
            if console.is_terminal:
                with Live(board, console=console, refresh_per_second=8):
                    async for event in events:
                        board.apply(event)
                        if board.synced:
                            first_snapshot.reschedule(None)
                return 0
            # Not a terminal: the table once, then a line per state change.
            async for event in events:
                was_synced = board.synced
                changed = board.apply(event)
                if board.synced and not was_synced:
                    first_snapshot.reschedule(None)
                    console.print(board.table())
                elif was_synced and changed is not None:
                    console.print(state_change_line(changed), soft_wrap=True)
    except TimeoutError:
        raise CliError(
            f"no snapshot of scope {args.scope!r} within {args.timeout:g} s: "
            f"is a controller running at {args.controller}?"
        ) from None
    return 0


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
    _print_table(console, records, f"scope {args.scope}: {len(records)} processes defined")
    return 0


async def _purge(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    purged = await client.purge_processes(args.scope)
    console.print(
        f"purged {purged} process{'es' if purged != 1 else ''} from scope {args.scope!r}", soft_wrap=True
    )
    return 0


def add_ps(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("ps", parents=[client], help="the processes of a scope")
    p.add_argument("scope")
    p.add_argument("--watch", "-w", action="store_true", help="a live table until Ctrl-C")
    p.add_argument("--name", default="", metavar="TEXT", help="only processes whose id or name contains TEXT")
    p.add_argument("--level", type=int, default=0, metavar="N", help="only detail levels up to N (1-4)")
    p.set_defaults(handler=client_command(_ps))  # Ctrl-C: 130, as any interrupted command


def add_dismiss(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "dismiss", parents=[client], help="clear the error and progress of an ended process"
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.set_defaults(handler=client_command(_dismiss))


def add_define(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("define", parents=[client], help="(re)define a scope's processes from a worker")
    p.add_argument("scope")
    p.add_argument(
        "--clean", action="store_true", help="remove records of processes the worker no longer has"
    )
    p.add_argument(
        "--only-if-missing", action="store_true", help="do nothing if the scope is already defined"
    )
    p.set_defaults(handler=client_command(_define))


def add_purge(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("purge", parents=[client], help="remove every process record of a scope")
    p.add_argument("scope")
    p.set_defaults(handler=client_command(_purge))
