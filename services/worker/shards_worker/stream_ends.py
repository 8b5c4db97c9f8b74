"""One ExecuteProcess stream seen from the worker: its answers, and the ends of its runs.

A controller that sets ``takes_ends`` gets the end of each run it started on
the stream back on the same stream, and acknowledges it in a later request
once it is stored. That spares each end the wait for the FinishRun call in
flight before it (11-12 ms under sustained launches: ``bench/README.md``, tenth
session) and a new call's setup; the acknowledgement most often travels with the
next runs, which were committed with the end.

An end the stream does not acknowledge as stored (the controller refused it,
or the stream ended first: a take-over), or not within ``ACK_TIMEOUT_S`` (a
paused controller keeps its streams open, and a new leader has the run now), is
left to FinishRun, which retries until the leader answers; FinishRun is
idempotent, so an end stored here and reported there again is taken once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.states import ProcessState
from shards_worker.context import _ContextBase
from shards_worker.link import ends_that_fit, fit_end
from shards_worker.log_buffer import LogBuffer

# As long as a FinishRun call waits for its answer before it is tried again.
ACK_TIMEOUT_S = 5.0


def end_message(
    run_id: str, context: _ContextBase, buffer: LogBuffer, state: ProcessState, error: str
) -> pb.RunEnd:
    """The end of a run whose code has returned, with what its log has not yet had stored."""
    progress = context._progress
    buffer.take(context._logs)
    rest_offset, rest = buffer.rest()
    return pb.RunEnd(
        run_id=run_id,
        state=state.proto_value,  # type: ignore[arg-type]
        error=error,
        progress=pb.Progress(message=progress[0], rate=progress[1]) if progress else None,
        log_lines=list(buffer.tail),  # the whole tail: what the stream carried may not have been kept
        # Every line not yet stored: the end is stored after them.
        log_rest=rest,
        log_offset=rest_offset,
        log_total=buffer.total,
    )


class StreamEnds:
    """The messages one ExecuteProcess stream sends the controller, and the ends it waits on."""

    def __init__(self) -> None:
        self.takes_ends = False  # the controller said so (``takes_ends`` in its requests)
        self._answers: deque[pb.ExecuteProcessResponse] = deque()
        self._ends: list[tuple[pb.RunEnd, asyncio.Future[bool]]] = []
        self._sent: dict[str, asyncio.Future[bool]] = {}  # sent, not yet acknowledged
        self._wake = asyncio.Event()
        self._closed = False

    async def finish(self, end: pb.RunEnd, timeout_s: float = ACK_TIMEOUT_S) -> bool:
        """Send ``end`` on the stream; True once the controller has stored it, False when it did
        not take it here (the caller reports it by FinishRun)."""
        if self._closed or not self.takes_ends:
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ends.append((fit_end(end), done))
        self._wake.set()
        try:
            return await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            # Forgotten here: a late acknowledgement is ignored, FinishRun has the end now.
            self._ends = [(e, d) for e, d in self._ends if d is not done]
            self._sent.pop(end.run_id, None)
            return False

    def answer(self, response: pb.ExecuteProcessResponse) -> None:
        """The answer to the next batch, sent before any later one."""
        self._answers.append(response)
        self._wake.set()

    def acknowledged(self, request: pb.ExecuteProcessRequest) -> None:
        for run_id in request.stored_ends:
            self._settle(run_id, True)
        for refusal in request.refused_ends:
            self._settle(refusal.run_id, False)

    def _settle(self, run_id: str, stored: bool) -> None:
        done = self._sent.pop(run_id, None)
        if done is not None and not done.done():
            done.set_result(stored)

    async def messages(self, reading: asyncio.Task[None]) -> AsyncIterator[pb.ExecuteProcessResponse]:
        """What to send, as it comes, until ``reading`` (the requests' reader) is over."""
        reading.add_done_callback(lambda _: self._wake.set())
        while True:
            while not self._answers and not self._ends:
                if reading.done():
                    return
                self._wake.clear()
                await self._wake.wait()
            message = self._answers.popleft() if self._answers else pb.ExecuteProcessResponse(ends_only=True)
            self._take_ends(message)
            yield message

    def _take_ends(self, message: pb.ExecuteProcessResponse) -> None:
        """The oldest ends that fit one message (count and bytes), moved to ``_sent``."""
        count = ends_that_fit(end for end, _ in self._ends)
        for end, done in self._ends[:count]:
            message.ends.append(end)
            self._sent[end.run_id] = done
        del self._ends[:count]

    def close(self) -> None:
        """The stream is over: every end it did not get acknowledged goes by FinishRun."""
        self._closed = True
        waiting = [done for _, done in self._ends] + list(self._sent.values())
        self._ends, self._sent = [], {}
        for done in waiting:
            if not done.done():
                done.set_result(False)
