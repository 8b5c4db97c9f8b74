"""The worker's outbox of progress batches, alone (pure unit: no stream, no controller).

grpc's consumer of a client stream whose call failed keeps waiting on the stream's iterator:
before the eleventh session it took the next batch only to drop it, uncounted, so that a run's
end that waits for its lines to be on the stream (``Outbox.sent``) could wait its full 10 s."""

from __future__ import annotations

import asyncio

from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_worker.metrics import WorkerMetrics
from shards_worker.outbox import Outbox


def _batch(n: int) -> pb.PushRunEventsRequest:
    return pb.PushRunEventsRequest(worker_id=f"w{n}")


def test_an_ended_streams_iterator_takes_nothing_more_the_next_stream_gets_it() -> None:
    async def scenario() -> None:
        outbox = Outbox(WorkerMetrics())
        ended = outbox.drain()
        stale = asyncio.ensure_future(anext(ended))  # waits, as grpc's consumer does
        await asyncio.sleep(0)
        outbox.end_stream()  # the call failed
        outbox.put(_batch(1))
        fresh = outbox.drain()
        assert (await asyncio.wait_for(anext(fresh), 1)).worker_id == "w1"
        try:
            await asyncio.wait_for(stale, 1)
            raise AssertionError("the ended stream's iterator took a batch")
        except StopAsyncIteration:
            pass  # it ended, empty-handed

    asyncio.run(scenario())


def test_the_batch_on_its_way_when_the_stream_failed_counts_as_taken() -> None:
    async def scenario() -> None:
        outbox = Outbox(WorkerMetrics())
        outbox.put(_batch(1))
        stream = outbox.drain()
        await anext(stream)  # taken by the stream, which then fails before asking for more
        assert outbox.taken_count == 0
        outbox.end_stream()
        assert outbox.taken_count == 1
        await asyncio.wait_for(outbox.sent(outbox.put_count), 0.5)  # an end waiting for it goes on
        outbox.put(_batch(2))
        await asyncio.wait_for(anext(outbox.drain()), 1)
        assert outbox.taken_count == 1  # counted once the next stream asks for more, not before

    asyncio.run(scenario())
