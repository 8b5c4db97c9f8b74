"""``shards schedules``, ``shards pause``, ``shards resume``: the scope's cron schedules."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shards.aio import AsyncClient
from shards.cli.connection import client_command
from shards.cli.running import Commands
from shards.cli_render import format_time
from shards.models import ScheduleInfo


def schedules_table(schedules: Iterable[ScheduleInfo], *, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("Process", no_wrap=True)
    table.add_column("Schedule", no_wrap=True)
    table.add_column("Zone", no_wrap=True)
    table.add_column("Next fire", no_wrap=True)
    table.add_column("Last fire", no_wrap=True)
    table.add_column("Last outcome", overflow="fold", max_width=60)
    table.add_column("Fires / skips / missed", justify="right", no_wrap=True)
    for schedule in schedules:
        table.add_row(
            schedule.process_id,
            schedule.schedule,
            schedule.timezone,
            Text("paused", style="yellow") if schedule.paused else Text(format_time(schedule.next_fire_at)),
            format_time(schedule.last_fire_at),
            Text(schedule.last_outcome),
            f"{schedule.fires} / {schedule.skips} / {schedule.missed}",
        )
    return table


async def _schedules(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    schedules = await client.list_schedules(args.scope)
    if not schedules:
        console.print(f"no schedules in {args.scope}")
        return 0
    console.print(schedules_table(schedules, title=f"schedules in {args.scope}"))
    return 0


async def _pause(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    schedule = await client.pause_schedule(args.scope, args.process)
    console.print(f"{schedule.process_id}: schedule {schedule.schedule!r} paused", soft_wrap=True)
    return 0


async def _resume(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    schedule = await client.resume_schedule(args.scope, args.process)
    console.print(
        f"{schedule.process_id}: schedule {schedule.schedule!r} resumed, next fire at "
        f"{format_time(schedule.next_fire_at)}",
        soft_wrap=True,
    )
    return 0


def add_schedules(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "schedules", parents=[client], help="a scope's schedules: next fire, last outcome"
    )
    p.add_argument("scope")
    p.set_defaults(handler=client_command(_schedules))
    p = commands.add_parser("pause", parents=[client], help="pause a process's schedule (until resumed)")
    p.add_argument("scope")
    p.add_argument("process")
    p.set_defaults(handler=client_command(_pause))
    p = commands.add_parser("resume", parents=[client], help="resume a paused schedule (from now on)")
    p.add_argument("scope")
    p.add_argument("process")
    p.set_defaults(handler=client_command(_resume))
