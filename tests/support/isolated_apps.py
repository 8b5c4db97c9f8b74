"""Process code for the run-control tests (issue 15): module-level, so it runs isolated too.

Scope ids carry parameters where a test needs them ("farm-3": three attempts...).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import replace
from typing import Any

from shards import ProcessState
from shards.models import RetryPolicy
from shards_worker import AsyncProcessContext, ProcessContext, ProcessDefinition, WorkerApp
from shards_worker.definition import Execute

# Small graces keep the tests fast: a stop is forced 0.3 s after it is asked, SIGKILL 0.3 s later.
STOP_GRACE_S = 0.3
KILL_GRACE_S = 0.3
FAST_RETRY = RetryPolicy(max_attempts=5, backoff_s=0.1, backoff_multiplier=2.0, max_backoff_s=0.2)
SLOW_RETRY = RetryPolicy(max_attempts=3, backoff_s=1.5)
# Room for a test to stop something between attempts, on a loaded machine too.
STOP_ROOM_RETRY = RetryPolicy(max_attempts=3, backoff_s=3.0)


def ignores_stop(context: ProcessContext) -> None:
    """Never looks at should_continue; runs for 60 s (a hung call, a forgotten loop)."""
    context.report_progress("ignoring stops", 0.1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)


def ignores_sigterm(context: ProcessContext) -> None:
    """Ignores the stop and SIGTERM too: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ignores_stop(context)


def ignores_stop_for_a_while(context: ProcessContext) -> None:
    """In a thread: ignores the stop for 1.5 s, then returns."""
    context.report_progress("busy", 0.2)
    time.sleep(1.5)


def segfaults(context: ProcessContext) -> None:
    context.report_progress("about to crash", 0.5)
    time.sleep(0.1)
    ctypes.string_at(0)


def exits_3(context: ProcessContext) -> None:
    context.report_progress("about to exit", 0.5)
    time.sleep(0.1)
    os._exit(3)


def cooperative(context: ProcessContext) -> None:
    """Reports progress and logs, launches a child, then runs until stopped (all in its process)."""
    context.log(f"isolated in pid {os.getpid()}")
    context.report_progress("starting", 0.1)
    state = context.run_process("iso-child")
    context.log(f"scope data {context.scope_data!r}")
    while context.should_continue():
        context.report_progress(f"child ended {state}; waiting for the stop", 0.9)
        time.sleep(0.01)
    context.log("stopped as asked")


def child(context: ProcessContext) -> None:
    context.report_progress("child ran", 1.0)


def raises(context: ProcessContext) -> None:
    context.log("about to raise")
    raise ValueError("bad sheep")


def check_stop_loop(context: ProcessContext) -> None:
    context.report_progress("looping", 0.1)
    while True:
        context.check_stop()
        time.sleep(0.01)


async def async_isolated(context: AsyncProcessContext) -> None:
    state = await context.run_process("iso-child")
    context.report_progress(f"async child ended {state}", 1.0)


def quick(context: ProcessContext) -> None:
    context.report_progress("done", 1.0)


def cooperative_loop(context: ProcessContext) -> None:
    """Runs until stopped, for up to 60 s (in a thread or isolated)."""
    deadline = time.monotonic() + 60
    while context.should_continue() and time.monotonic() < deadline:
        context.report_progress("looping", 0.5)
        time.sleep(0.01)


def fails_twice(context: ProcessContext) -> None:
    """Fails on attempts 1 and 2, then is done."""
    context.report_progress(f"attempt {context.attempt}", 0.5)
    if context.attempt < 3:
        raise RuntimeError(f"attempt {context.attempt} failed")


def always_fails(context: ProcessContext) -> None:
    raise RuntimeError(f"attempt {context.attempt} failed")


def hangs_on_first_attempt(context: ProcessContext) -> None:
    """The first attempt runs (ignoring stops) until its worker is killed; the next is done."""
    context.report_progress(f"attempt {context.attempt} on {os.getpid()}", 0.5)
    if context.attempt == 1:
        time.sleep(60)


def _parent_of(child: str, **options: Any) -> Execute:
    """A parent that runs ``child`` through the controller and reports what it ended."""

    def parent(context: ProcessContext) -> None:
        context.report_progress(f"running {child}", 0.1)
        state = context.run_process(child, **options)
        context.report_progress(f"child ended {state}", 1.0)

    return parent


def parent_of_flaky(context: ProcessContext) -> None:
    """Module-level (an isolated parent's code must be importable): runs a child retried twice."""
    state = context.run_process("retry-fails-twice")
    context.report_progress(f"child ended {state}", 1.0)


def _iso(process_id: str, execute: Execute, **options: Any) -> ProcessDefinition:
    return ProcessDefinition(
        process_id,
        execute,
        isolation="process",
        stop_grace_s=STOP_GRACE_S,
        kill_grace_s=KILL_GRACE_S,
        **options,
    )


ISOLATED = [
    _iso("iso-ignores-stop", ignores_stop),
    _iso("iso-ignores-sigterm", ignores_sigterm),
    _iso("iso-segfault", segfaults),
    _iso("iso-exit-3", exits_3),
    _iso("iso-cooperative", cooperative),
    _iso("iso-raises", raises),
    _iso("iso-check-stop", check_stop_loop),
    _iso("iso-async", async_isolated),
    _iso("iso-quick", quick),
    ProcessDefinition("iso-child", child, name="Child of isolated code", detail_level=3),
    ProcessDefinition("thread-ignores-stop", ignores_stop_for_a_while, stop_grace_s=STOP_GRACE_S),
    ProcessDefinition("thread-quick", quick),
    ProcessDefinition("thread-loop", cooperative_loop),
    ProcessDefinition("thread-timeout", cooperative_loop, timeout_s=0.5),
    _iso("iso-timeout-kill", ignores_sigterm, timeout_s=0.5),
    ProcessDefinition("retry-fails-twice", fails_twice, retry=FAST_RETRY),
    _iso("iso-retry-fails-twice", fails_twice, retry=FAST_RETRY),
    ProcessDefinition("retry-slowly", always_fails, retry=SLOW_RETRY),
    ProcessDefinition("retry-after-loss", hangs_on_first_attempt, retry=FAST_RETRY),
    ProcessDefinition("retry-failed-only", always_fails, retry=replace(FAST_RETRY, on=(ProcessState.LOST,))),
    # Children with retries of their own (issue 15: a child's retries are its own definition's).
    ProcessDefinition("parent-of-flaky", _parent_of("retry-fails-twice")),
    _iso("iso-parent-of-flaky", parent_of_flaky),
    ProcessDefinition("parent-of-slow-retry", _parent_of("retry-slowly")),
    ProcessDefinition("retry-in-3-s", always_fails, retry=STOP_ROOM_RETRY),
    ProcessDefinition("parent-of-3-s-retry", _parent_of("retry-in-3-s")),
    ProcessDefinition("parent-of-lost", _parent_of("retry-after-loss")),
    ProcessDefinition("always-fails", always_fails),
    ProcessDefinition("retrying-parent", _parent_of("always-fails", survive_failure=True), retry=FAST_RETRY),
]

RUN_CONTROL_APP = WorkerApp(
    get_process_list=lambda scope_data: ISOLATED, get_scope_data=lambda scope_id: {"farm": scope_id}
)


def sleeps_2_5_s(context: ProcessContext) -> None:
    context.report_progress("busy", 0.5)
    time.sleep(2.5)


EVERY_SECOND = "* * * * * *"  # croniter: a sixth field is the seconds

# Scheduled processes fire as soon as their scope is defined: an app of their own.
SCHEDULE_APP = WorkerApp.of(
    [
        ProcessDefinition("sched-every-second", quick, schedule=EVERY_SECOND),
        ProcessDefinition("sched-none", quick),
        ProcessDefinition(
            "sched-overlap", sleeps_2_5_s, schedule=EVERY_SECOND, schedule_timezone="Europe/Paris"
        ),
    ]
)
