"""Hand runs to their workers, batching what becomes ready while a call is out.

Each worker has at most one ExecuteProcess call in flight. A run whose start
is persisted goes out at once when its worker's line is free; runs that become
ready while a call is out wait for it and then leave together in the next call.
So a lone launch pays one call, and under load a worker gets many runs per
call (the controller's CPU per run, not the latency, is what this saves).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from shards import validation as v
from shards.models import Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_controller.workers import WorkerEntry

log = logging.getLogger(__name__)

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# What the controller does with each run of a call: ``code`` is None when the
# worker started it, else why it did not (the call's status if the call failed).
Outcome = Callable[[Run, WorkerEntry, grpc.StatusCode | None, str], None]

# A call out: the runs it carries and its reply to come.
_Call = tuple[list[Run], Awaitable[pb.ExecuteProcessResponse]]


class Dispatcher:
    def __init__(
        self,
        timeout_s: float,
        outcome: Outcome,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._timeout_s = timeout_s
        self._outcome = outcome
        self._spawn = spawn

    def send(self, run: Run, entry: WorkerEntry) -> None:
        """Queue ``run`` for ``entry``; it leaves now if no call to that worker is out."""
        entry.outbox.append(run)
        if not entry.sending:
            entry.sending = True
            # The call is started here, not on the task's first turn of the
            # loop: the run is on its way before the launch's reply is sent.
            self._spawn(self._drain(entry, self._start_call(entry)))

    def _start_call(self, entry: WorkerEntry) -> _Call:
        batch = entry.outbox[: v.MAX_RUNS_PER_BATCH]
        del entry.outbox[: len(batch)]
        request = pb.ExecuteProcessRequest(
            runs=[
                pb.RunToExecute(
                    run_id=run.run_id,
                    scope_id=run.scope_id,
                    process_id=run.process_id,
                    parent_run_id=run.parent_run_id,
                )
                for run in batch
            ]
        )
        try:
            return batch, entry.stub.ExecuteProcess(request, timeout=self._timeout_s)
        except Exception as error:  # the worker's channel was closed: it has just been dropped
            return batch, _unavailable(f"worker {entry.worker_id} is gone: {error}")

    async def _drain(self, entry: WorkerEntry, call: _Call) -> None:
        try:
            while True:
                await self._settle(entry, *call)
                if not entry.outbox:
                    return
                call = self._start_call(entry)
        finally:
            entry.sending = False

    async def _settle(
        self, entry: WorkerEntry, batch: list[Run], call: Awaitable[pb.ExecuteProcessResponse]
    ) -> None:
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            for run in batch:
                self._outcome(run, entry, error.code(), error.details() or "")
            return
        refused = {r.run_id: r for r in reply.refused}
        for run in batch:
            refusal = refused.get(run.run_id)
            if refusal is None:
                self._outcome(run, entry, None, "")
            else:
                code = _CODES.get(refusal.code, grpc.StatusCode.UNKNOWN)
                self._outcome(run, entry, code, refusal.message)


async def _unavailable(details: str) -> pb.ExecuteProcessResponse:
    empty = grpc.aio.Metadata()
    raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, empty, empty, details, None)
