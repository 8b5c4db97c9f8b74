"""``shards workers``: the registered workers."""

from __future__ import annotations

import argparse

from rich.console import Console

from shards.aio import AsyncClient
from shards.cli.connection import client_command
from shards.cli.running import Commands
from shards.cli_render import workers_table


async def _workers(args: argparse.Namespace, client: AsyncClient, console: Console) -> int:
    workers = await client.list_workers()
    if not workers:
        me = await client.who_am_i()
        if me.auth_enabled:
            # The controller shows a worker only to those who may list every scope it serves.
            console.print(
                f"no workers visible to {me.principal}: a worker is listed only to principals "
                "that may list every scope it serves, so others may be registered",
                soft_wrap=True,
            )
        else:
            console.print("no workers registered")
        return 0
    console.print(workers_table(workers, title=f"{len(workers)} worker{'s' if len(workers) != 1 else ''}"))
    return 0


def add_workers(commands: Commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser("workers", parents=[client], help="the registered workers")
    p.set_defaults(handler=client_command(_workers))
