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
from collections import deque
from collections.abc import AsyncIterator

from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_worker.metrics import WorkerMetrics


class Outbox:
    def __init__(self, metrics: WorkerMetrics, size: int = 100) -> None:
        self._batches: deque[pb.PushRunEventsRequest] = deque()
        self._size = size
        self._ready = asyncio.Event()  # set when a batch comes, or a stream ends
        self._metrics = metrics
        self.put_count = 0
        self.taken_count = 0  # by the stream, or dropped
        self._taken = asyncio.Event()  # set (and replaced) at each batch taken
        # The stream that may take batches: each ``drain`` belongs to one, ``end_stream`` ends it.
        self._stream = 0
        self._on_the_way = False  # the current stream's last batch, not yet known sent

    @property
    def full(self) -> bool:
        return len(self._batches) >= self._size

    def put(self, batch: pb.PushRunEventsRequest) -> bool:
        """Queue ``batch``; True when the oldest had to go to make room."""
        dropped = self.full
        if dropped:
            self._batches.popleft()
            self._count_taken()
        self._batches.append(batch)
        self.put_count += 1
        self._ready.set()
        return dropped

    async def drain(self) -> AsyncIterator[pb.PushRunEventsRequest]:
        """What one stream sends: each batch, counted once the stream asks for the next."""
        stream = self._stream
        while True:
            while not self._batches and stream == self._stream:
                self._ready.clear()
                await self._ready.wait()
            if stream != self._stream:
                return  # that stream is over: the batches are the next one's
            batch = self._batches.popleft()
            self._metrics.progress_batches += 1
            self._on_the_way = True
            yield batch
            if stream == self._stream:  # else ``end_stream`` counted it
                self._on_the_way = False
                self._count_taken()

    def end_stream(self) -> None:
        """The stream failed: its ``drain`` takes nothing more, and its last batch is gone.

        grpc's consumer of a client stream whose call failed still waits on the stream's
        iterator: it took the next batch, only to drop it (after a take-over, the one that
        said again what the new leader must hear, an overdue stop). The batch that was on
        its way is counted taken, so that an end waiting for it (``sent``) goes on."""
        self._stream += 1
        self._ready.set()
        if self._on_the_way:
            self._on_the_way = False
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
