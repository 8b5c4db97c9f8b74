"""Process code for the whole-run-log tests: bursts of numbered lines, and a run that logs until told."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from shards_worker import AsyncProcessContext, ProcessContext, ProcessDefinition, WorkerApp
from tests.support.apps import DEFINITIONS, gate


def line(n: int) -> str:
    return f"line {n:06d}"


def _burst(count: int) -> Callable[[ProcessContext], None]:
    def run(context: ProcessContext) -> None:
        for n in range(count):
            context.log(line(n))

    return run


def ticking(context: ProcessContext) -> None:
    """A line every 10 ms until gate(scope_id) opens (or a stop), then ``done``."""
    opened = gate(context.scope_id)
    n = 0
    while not opened.wait(0.01) and context.should_continue():
        context.log(line(n))
        n += 1
    context.log("done")


TIMED_LINES = 300


def timed(context: ProcessContext) -> None:
    """TIMED_LINES lines over about 3 s, then ``done`` (for tests whose worker is another process)."""
    for n in range(TIMED_LINES):
        context.log(line(n))
        time.sleep(0.01)
    context.log("done")


def prints(context: ProcessContext) -> None:
    """Output of every kind: print (a line in two writes too), logging, context.log, stderr."""
    print("hello")
    print("a", end="")
    print("b")
    logging.getLogger("farm.app").warning("careful")
    context.log("direct")
    print("to stderr", file=sys.stderr)
    print("unfinished", end="")


PRINTED = ["hello", "ab", "WARNING farm.app: careful", "direct", "to stderr", "unfinished"]


async def prints_async(context: AsyncProcessContext) -> None:
    print("from a coroutine")
    logging.getLogger("farm.app").error("an error")


LOG_APP = WorkerApp.of(
    [
        *DEFINITIONS,
        ProcessDefinition("burst-10000", _burst(10_000), name="10,000 lines"),
        ProcessDefinition("burst-3000", _burst(3_000), name="3,000 lines"),
        ProcessDefinition("burst-100000", _burst(100_000), name="100,000 lines"),
        ProcessDefinition("ticking", ticking, name="A line every 10 ms"),
        ProcessDefinition("timed", timed, name="300 lines over 3 s"),
        ProcessDefinition("prints", prints, capture_output=True),
        ProcessDefinition("prints-uncaptured", prints),
        ProcessDefinition("prints-async", prints_async, capture_output=True),
        ProcessDefinition("prints-isolated", prints, isolation="process"),
    ]
)
