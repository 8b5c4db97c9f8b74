"""The one way a client command reaches the controller: a client from the flags and environment."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console

from shards.aio import AsyncClient
from shards.cli.running import INTERRUPTED, controllers, run_async
from shards.cli_render import make_console
from shards.errors import Unavailable
from shards.settings import settings_from_env

#: A client command's body: it gets the parsed flags, a connected client and the console.
Body = Callable[[argparse.Namespace, AsyncClient, Console], Coroutine[Any, Any, int]]


def client(args: argparse.Namespace) -> AsyncClient:
    # Token and TLS from SHARDS_TOKEN / SHARDS_TLS_* (see SECURITY.md); --controller wins.
    settings = settings_from_env()
    settings.pop("controller")
    return AsyncClient(
        controllers(args.controller), timeout_s=args.timeout, retry_deadline_s=args.timeout, **settings
    )


def client_command(
    body: Body,
    on_signal: int = INTERRUPTED,
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        console = make_console()

        async def work() -> int:
            connected = client(args)
            try:
                return await body(args, connected, console)
            except Unavailable as error:
                if not _unreachable(error.message):
                    raise  # the controller's own answer (a worker that did not answer, the store)
                raise Unavailable(
                    f"{error.message} (is a controller running at {args.controller}?)"
                ) from None
            finally:
                await connected.close()

        return run_async(work(), on_signal=on_signal)

    return run


_UNREACHABLE = ("failed to connect", "connection refused", "socket closed", "dns resolution", "unreachable")


def _unreachable(message: str) -> bool:
    """Whether an UNAVAILABLE came from gRPC failing to reach the controller (not from the controller)."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _UNREACHABLE)


def client_flags(default_controller: str, *, given_only: bool = False) -> argparse.ArgumentParser:
    """The flags every client command takes (a parent parser).

    ``given_only``: the flags of a subcommand, set only when given there, so
    that ``shards --controller X ps`` (given before the subcommand, to the
    top-level parser, which holds the defaults) is not overridden.
    """
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--controller",
        default=argparse.SUPPRESS if given_only else default_controller,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"controller address(es); the leader is found among them (default: {default_controller}, "
        "from $SHARDS_CONTROLLER when set)",
    )
    flags.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS if given_only else 10.0,
        metavar="SECONDS",
        help="give up on the controller after this long",
    )
    return flags
