"""The ``shards`` command line: one parser, each command added by the module of its group."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from shards.cli import logs, processes, runs, schedules, services, workers
from shards.cli.connection import client_flags
from shards.cli.running import INTERRUPTED, CliError
from shards.errors import ShardsError
from shards.settings import DEFAULT_CONTROLLER


def build_parser() -> argparse.ArgumentParser:
    default_controller = os.environ.get("SHARDS_CONTROLLER") or DEFAULT_CONTROLLER
    # --controller and --timeout go before the subcommand or after it.
    parser = argparse.ArgumentParser(
        prog="shards",
        description="Shards Process Manager: run, stop and watch named background processes.",
        parents=[client_flags(default_controller)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    service.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("SHARDS_LOG_FORMAT") or "text",
        help="text (default, $SHARDS_LOG_FORMAT) or json: one object per line, with the run, scope and "
        "process where one applies; never a token",
    )

    client = client_flags(default_controller, given_only=True)

    # In the order ``shards --help`` lists them.
    services.add_controller(commands, service)
    services.add_worker(commands, service, default_controller)
    services.add_web(commands, service)
    processes.add_ps(commands, client)
    processes.add_get(commands, client)
    runs.add_launch(commands, client)
    runs.add_stop(commands, client)
    processes.add_dismiss(commands, client)
    processes.add_define(commands, client)
    processes.add_reset(commands, client)
    processes.add_purge(commands, client)
    workers.add_workers(commands, client)
    runs.add_runs(commands, client)
    logs.add_logs(commands, client)
    schedules.add_schedules(commands, client)
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
        return error.exit_code if isinstance(error, CliError) else 1
    except KeyboardInterrupt:
        return INTERRUPTED
