"""Process code that logs through ``logging`` (not only ``context.log``), for the structured-log tests."""

from __future__ import annotations

import logging

from shards_worker import ProcessContext, ProcessDefinition, WorkerApp

log = logging.getLogger("tests.farmer")


def talkative(context: ProcessContext) -> None:
    log.warning("counting the sheep of %s", context.scope_id)
    context.log("a line of the run's own")
    context.report_progress("counted", 1.0)


def broken(context: ProcessContext) -> None:
    raise RuntimeError("the fence is down")


LOGGING_APP = WorkerApp.of(
    [
        ProcessDefinition("talkative", talkative, name="Talks through logging"),
        ProcessDefinition("broken", broken, name="Fails"),
    ]
)
