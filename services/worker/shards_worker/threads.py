"""A run's code in a pool thread: it says it has been picked up, carries the run in its log records,
and, with ``capture_output``, sends what it prints and logs to the run's log."""

from __future__ import annotations

import asyncio
from typing import Any

from shards._logging import run_context
from shards_worker.capture import capturing
from shards_worker.definition import ProcessDefinition


def signal_then_run(
    loop: asyncio.AbstractEventLoop,
    started: asyncio.Future[None],
    definition: ProcessDefinition,
    context: Any,
) -> Any:
    loop.call_soon_threadsafe(_set_done, started)
    # The thread's log lines carry the run (pool threads are reused: reset after).
    with (
        run_context(run_id=context.run_id, scope_id=context.scope_id, process_id=context.process_id),
        capturing(context.log if definition.captures_output else None),
    ):
        return definition.execute(context)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
