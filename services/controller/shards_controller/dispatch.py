"""Hand runs to their workers, batching what becomes ready while a call is out.

Each worker has at most one ExecuteProcess call in flight. A run whose start
is persisted goes out at once when its worker's line is free; runs that become
ready while a call is out wait for it and then leave together in the next call.
So a lone launch pays one call, and under load a worker gets many runs per
call (the controller's CPU per run, not the latency, is what this saves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
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
            self._spawn(self._drain(entry))

    async def _drain(self, entry: WorkerEntry) -> None:
        try:
            while entry.outbox:
                batch = entry.outbox[: v.MAX_RUNS_PER_BATCH]
                del entry.outbox[: len(batch)]
                await self._call(entry, batch)
        finally:
            entry.sending = False

    async def _call(self, entry: WorkerEntry, batch: list[Run]) -> None:
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
            reply = await entry.stub.ExecuteProcess(request, timeout=self._timeout_s)
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
