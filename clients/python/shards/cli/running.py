"""What every command shares to run: signals, the event loop, logging, the exit codes, ``CliError``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeAlias

from shards import _aio

log = logging.getLogger("shards.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
INTERRUPTED = 130

#: What a group module adds its subcommands to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CliError(Exception):
    """A usage problem found after parsing (printed as ``error: ...``, exit 1)."""

    exit_code = 1


class StartupError(CliError):
    """A service that cannot start (printed as one line ``error: ...``, exit 2, never a traceback)."""

    exit_code = 2


def startup_error(what: str, error: BaseException) -> StartupError:
    """The one line that says why ``what`` (the controller, the worker) could not start."""
    import sqlite3

    text = str(error)
    if isinstance(error, RuntimeError) and "Failed to bind to address" in text:
        address = text.split("Failed to bind to address", 1)[1].split(";", 1)[0].strip()
        text = f"cannot listen on {address}: the address is in use or not available"
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    elif isinstance(error, sqlite3.DatabaseError):
        text = f"the store is not a usable SQLite database ({error})"
    log.debug("%s could not start", what, exc_info=error)  # the traceback, with --verbose
    return StartupError(f"cannot start the {what}: {text}")


def controllers(value: str) -> list[str]:
    addresses = [a.strip() for a in value.split(",") if a.strip()]
    if not addresses:
        raise CliError("--controller needs at least one HOST:PORT")
    return addresses


@contextlib.contextmanager
def on_signals(callback: Callable[[], object]) -> Iterator[None]:
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


def run_async(work: Coroutine[Any, Any, int], *, on_signal: int = INTERRUPTED) -> int:
    """Run ``work``; SIGINT/SIGTERM cancel it and the command exits with ``on_signal``."""

    async def main() -> int:
        task = asyncio.ensure_future(work)
        with on_signals(task.cancel):
            try:
                return await task
            except asyncio.CancelledError:
                return on_signal

    try:
        return _aio.run(main())
    except KeyboardInterrupt:
        return on_signal


async def wait_for_signal(unless: asyncio.Event | None = None) -> bool:
    """Until SIGINT or SIGTERM (True), or until ``unless`` is set (False)."""
    # Not raced against server.wait_for_termination(): cancelling that wait
    # cancels grpc's own shutdown future, and the later server.stop() fails.
    stop = asyncio.Event()
    with on_signals(stop.set):
        waits = [asyncio.ensure_future(stop.wait())]
        if unless is not None:
            waits.append(asyncio.ensure_future(unless.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    if stop.is_set():
        log.info("stopping (signal received)")
    return stop.is_set()


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    """Services log to stderr: text, or one JSON object per line (``--log-format json``)."""
    from shards import _logging

    _logging.setup(logging.DEBUG if verbose else logging.INFO, log_format)
