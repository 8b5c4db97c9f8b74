"""``shards ps``, ``get``, ``define``, ``reset``, ``purge``, ``dismiss``: the processes of a scope."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.console import Console
from rich.live import Live

from shards.aio import AsyncClient
from shards.cli.connection import client_command
from shards.cli.running import CliError, Commands
from shards.cli_plain import PLAIN_FROM, plain_process_table
from shards.cli_render import ProcessBoard, process_table, record_detail, state_change_line, state_text
from shards.models import DefineResult, ProcessRecord


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        name_contains=args.name,
        max_detail_level=args.level,
        name_regex=args.search,
        hide_special=args.hide_special,
        active_only=args.active,
    )


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.name or args.level or args.search or args.hide_special or args.active)


async def _ps(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    if args.watch:
        return await _watch(args, client, console)
    records = await client.list_processes(args.scope, **_filters(args))
    if not records:
        if _filtered(args):
            console.print(f"no processes matching the filter in scope {args.scope!r}", soft_wrap=True)
        else:
            # The first view defines a scope that a live worker serves: none does, or it lists nothing.
            console.print(
                f"no processes in scope {args.scope!r}: no live worker serves it, or its workers list "
                f"none (see shards workers; once one serves it, shards ps {args.scope} defines it)",
                soft_wrap=True,
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


async def _get(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    console.print(record_detail(await client.get_process(args.scope, args.process)))
    return 0


async def _watch(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    board = ProcessBoard(title=f"scope {args.scope} (Ctrl-C to quit)")
    events = client.watch_processes(args.scope, **_filters(args))
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
        f"{args.process}: messages dismissed (now ", state_text(record.state), ")", sep="", soft_wrap=True
    )
    return 0


async def _define(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    result = await client.define_processes(args.scope, only_if_missing=args.only_if_missing, clean=args.clean)
    _print_table(
        console, list(result.processes), f"scope {args.scope}: {len(result.processes)} processes defined"
    )
    console.print(define_summary(result), soft_wrap=True)
    return 0


async def _reset(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    result = await client.reset_processes(args.scope)
    count = len(result.processes)
    _print_table(console, list(result.processes), f"scope {args.scope}: reset, {count} processes")
    console.print(define_summary(result), soft_wrap=True)
    return 0


def define_summary(result: DefineResult) -> str:
    """What a define or a reset changed, in one line."""
    parts = []
    if result.wiped:
        parts.append(f"wiped {result.wiped} record{'s' if result.wiped != 1 else ''}")
    if result.added:
        parts.append(f"added {', '.join(result.added)}")
    if result.removed:
        parts.append(f"removed {', '.join(result.removed)} (no longer listed by the workers)")
    if result.kept:
        parts.append(f"kept {', '.join(result.kept)} until their runs end (no longer listed, still active)")
    return "; ".join(parts) if parts else "nothing changed"


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
    p.add_argument(
        "--search",
        default="",
        metavar="REGEX",
        help="only processes whose id or name matches REGEX (case-insensitive, RE2 syntax)",
    )
    p.add_argument(
        "--level",
        type=int,
        default=0,
        metavar="N",
        help="only detail levels up to N (1-4; active ones always)",
    )
    p.add_argument(
        "--hide-special", action="store_true", help="leave out special processes (active ones always show)"
    )
    p.add_argument(
        "--active", action="store_true", help="only active processes (the original's focus on active)"
    )
    p.set_defaults(handler=client_command(_ps))  # Ctrl-C: 130, as any interrupted command


def add_get(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("get", parents=[client], help="every field of one process record")
    p.add_argument("scope")
    p.add_argument("process")
    p.set_defaults(handler=client_command(_get))


def add_dismiss(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "dismiss", parents=[client], help="return an ended process to idle, clearing its error and progress"
    )
    p.add_argument("scope")
    p.add_argument("process")
    p.set_defaults(handler=client_command(_dismiss))


def add_define(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("define", parents=[client], help="(re)define a scope's processes from a worker")
    p.add_argument("scope")
    p.add_argument("--clean", action="store_true", help="first wipe every inactive record, statuses included")
    p.add_argument(
        "--only-if-missing", action="store_true", help="do nothing if the scope is already defined"
    )
    p.set_defaults(handler=client_command(_define))


def add_reset(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "reset",
        parents=[client],
        help="wipe every record of a scope and define it again (refused while a process is active)",
    )
    p.add_argument("scope")
    p.set_defaults(handler=client_command(_reset))


def add_purge(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("purge", parents=[client], help="remove every process record of a scope")
    p.add_argument("scope")
    p.set_defaults(handler=client_command(_purge))
