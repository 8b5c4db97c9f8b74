"""Process code the tests run (real code, run by real workers)."""

from __future__ import annotations

import asyncio
import threading
import time

from shards_worker import AsyncProcessContext, ProcessContext, ProcessDefinition, WorkerApp

# Gates a test can open to let a "gated" process finish: name -> Event.
GATES: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


def quick(context: ProcessContext) -> None:
    context.report_progress("half", 0.5)
    context.log("quick ran")
    context.report_progress("all", 1.0)


def until_stopped(context: ProcessContext) -> None:
    n = 0
    while context.should_continue():
        n += 1
        context.report_progress(f"tick {n}", min(n / 1000, 1.0))
        time.sleep(0.01)


def gated(context: ProcessContext) -> None:
    """Waits for the test to open gate(scope_id) (or for a stop)."""
    opened = gate(context.scope_id)
    while not opened.wait(0.01):
        if not context.should_continue():
            return
    context.report_progress("gate opened", 1.0)


def failing(context: ProcessContext) -> None:
    context.report_progress("about to fail", 0.3)
    raise RuntimeError("the sheep escaped")


async def async_quick(context: AsyncProcessContext) -> None:
    for n in range(5):
        context.report_progress(f"async {n}", (n + 1) / 5)
        await asyncio.sleep(0)


def _parent(child: str, survive_failure: bool, survive_stopping: bool):
    def run(context: ProcessContext) -> None:
        state = context.run_process(child, survive_failure=survive_failure, survive_stopping=survive_stopping)
        context.report_progress(f"child ended {state}", 1.0)

    return run


async def async_parent(context: AsyncProcessContext) -> None:
    state = await context.run_process("quick")
    context.report_progress(f"child ended {state}", 1.0)


def adhoc_parent(context: ProcessContext) -> None:
    child = ProcessDefinition("adhoc-child", quick, name="Ad-hoc child", detail_level=3)
    context.run_process(child)


DEFINITIONS = [
    ProcessDefinition("quick", quick, name="Quick one", detail_level=2),
    ProcessDefinition("until-stopped", until_stopped, name="Runs until stopped", detail_level=1),
    ProcessDefinition("gated", gated, name="Gated", detail_level=3),
    ProcessDefinition("failing", failing, name="Fails", detail_level=2, warning="It will fail"),
    ProcessDefinition("async-quick", async_quick, name="Async quick", detail_level=4),
    ProcessDefinition("async-parent", async_parent, name="Async parent", detail_level=1),
    ProcessDefinition("adhoc-parent", adhoc_parent, name="Ad-hoc parent", detail_level=1),
]
for _child in ("failing", "until-stopped"):
    for _sf in (False, True):
        for _ss in (False, True):
            DEFINITIONS.append(
                ProcessDefinition(
                    f"parent-of-{_child}-{'sf' if _sf else 'nf'}-{'ss' if _ss else 'ns'}",
                    _parent(_child, _sf, _ss),
                    name=f"Parent of {_child}",
                    detail_level=1,
                    special=True,
                )
            )

APP = WorkerApp.of(DEFINITIONS)


def _job(context: ProcessContext) -> None:
    """Appends one line per execution to $SHARDS_TEST_RUN_LOG: run id, process id, start, end."""
    import os

    started = time.time()
    time.sleep(0.02)
    context.report_progress("working", 0.5)
    time.sleep(0.02)
    line = f"{context.run_id} {context.process_id} {started:.6f} {time.time():.6f}\n"
    with open(os.environ["SHARDS_TEST_RUN_LOG"], "a") as log:
        log.write(line)


# Many distinct processes (job-0 ... job-299) plus the ones above, for failover tests.
HA_APP = WorkerApp.of(
    [*DEFINITIONS, *(ProcessDefinition(f"job-{n}", _job, name=f"Job {n}") for n in range(300))]
)


def stubborn(context: ProcessContext) -> None:
    """Ignores a stop: waits for the test to open gate("stubborn:" + scope_id), however long."""
    gate(f"stubborn:{context.scope_id}").wait(60)


BLOCK_S = 2.5


async def blocking_async(context: AsyncProcessContext) -> None:
    """An ``async def`` that blocks its loop for BLOCK_S (the mistake of issue 10, item 5)."""
    time.sleep(BLOCK_S)  # noqa: ASYNC251 (the point of it)


def chatty(context: ProcessContext) -> None:
    """Logs 40 numbered lines over about 2 s."""
    for n in range(40):
        context.log(f"line {n}")
        time.sleep(0.05)


FAULT_APP = WorkerApp.of(
    [
        *DEFINITIONS,
        ProcessDefinition("stubborn", stubborn, name="Ignores stops", detail_level=2),
        ProcessDefinition("blocking-async", blocking_async, name="Blocks its loop", detail_level=2),
        ProcessDefinition("chatty", chatty, name="Logs lines", detail_level=2),
    ]
)
