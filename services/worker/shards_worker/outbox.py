"""The batches of progress and log lines waiting for the worker's PushRunEvents stream.

Bounded: when it is full (no controller takes them), the oldest batch goes
(newer progress supersedes it; its lines are sent again: the caller rewinds).
It counts the batches put and those the stream took, so that a run's end can
wait until the lines it sent before are on the stream (``sent``): an end is a
call of its own, which would otherwise overtake lines queued here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_worker.metrics import WorkerMetrics


class Outbox:
    def __init__(self, metrics: WorkerMetrics, size: int = 100) -> None:
        self._queue: asyncio.Queue[pb.PushRunEventsRequest] = asyncio.Queue(maxsize=size)
        self._metrics = metrics
        self.put_count = 0
        self.taken_count = 0  # by the stream, or dropped
        self._taken = asyncio.Event()  # set (and replaced) at each batch taken

    @property
    def full(self) -> bool:
        return self._queue.full()

    def put(self, batch: pb.PushRunEventsRequest) -> bool:
        """Queue ``batch``; True when the oldest had to go to make room."""
        dropped = self._queue.full()
        if dropped:
            self._queue.get_nowait()
            self._count_taken()
        self._queue.put_nowait(batch)
        self.put_count += 1
        return dropped

    async def drain(self) -> AsyncIterator[pb.PushRunEventsRequest]:
        """What the stream sends: each batch, counted once the stream asks for the next."""
        while True:
            batch = await self._queue.get()
            self._metrics.progress_batches += 1
            yield batch
            self._count_taken()

    def _count_taken(self) -> None:
        self.taken_count += 1
        taken, self._taken = self._taken, asyncio.Event()
        taken.set()

    async def sent(self, mark: int, timeout_s: float = 10.0) -> None:
        """Until the first ``mark`` batches were taken by the stream (at most ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.taken_count < mark and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), left)
