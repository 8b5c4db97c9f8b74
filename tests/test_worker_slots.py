"""A worker's slots: a run whose code has returned holds none, though it waits for the controller's ack."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import pytest

from shards.errors import ResourceExhausted
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_worker import ProcessContext, ProcessDefinition, WorkerApp
from shards_worker.link import ControllerLink
from shards_worker.metrics import WorkerMetrics
from shards_worker.runner import Runner
from tests.support.waiting import assert_eventually_async


class _UnansweredLink:
    """A link to a controller that has the run's end but whose answer is still on the way."""

    def __init__(self) -> None:
        self.ends: list[str] = []
        self.answer = asyncio.Event()
        self.metrics = WorkerMetrics()

    async def finish_run(self, worker_id: str, end: pb.RunEnd) -> None:
        self.ends.append(end.run_id)
        await self.answer.wait()


RELEASE = threading.Event()


def _nothing(context: ProcessContext) -> None:
    return None


def _hold(context: ProcessContext) -> None:
    RELEASE.wait(10)


def test_a_run_whose_code_returned_frees_its_slot_before_the_controller_answers() -> None:
    async def scenario() -> None:
        link = _UnansweredLink()
        app = WorkerApp.of([ProcessDefinition("quick", _nothing), ProcessDefinition("hold", _hold)])
        runner = Runner(app, cast(ControllerLink, link), "w1", capacity=1)
        await runner.execute(pb.RunToExecute(run_id="r1", scope_id="s", process_id="quick"))
        await assert_eventually_async(lambda: link.ends == ["r1"], timeout_s=5)
        # r1 is still listed (heartbeats name it until the controller answers),
        # but the controller has freed its slot and given it to r2: r2 starts.
        assert runner.running_ids() == ["r1"]
        await runner.execute(pb.RunToExecute(run_id="r2", scope_id="s", process_id="hold"))
        # r2's code holds the only slot: a third run is refused.
        with pytest.raises(ResourceExhausted):
            await runner.execute(pb.RunToExecute(run_id="r3", scope_id="s", process_id="quick"))
        RELEASE.set()
        link.answer.set()
        await assert_eventually_async(lambda: runner.running_ids() == [], timeout_s=5)
        await runner.close(grace_s=1)

    asyncio.run(scenario())
