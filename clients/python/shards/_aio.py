"""Small asyncio helpers shared by the services (private)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop where it is installed, unless ``SHARDS_EVENT_LOOP=asyncio``; else asyncio's.

    The services and the blocking client run on it: each gRPC hop costs a few
    turns of the loop, and uvloop's turns are cheaper (launch -> code starts
    went from 2.45 ms to 1.86 ms, see bench/README.md). ``asyncio`` is the way
    out for process code that needs the standard loop.
    """
    if os.environ.get("SHARDS_EVENT_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop ``loop_factory`` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | asyncio.Task[None] | None]) -> None:
    """Cancel ``tasks`` and wait until each has finished, whatever it ended with."""
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
