"""Hand runs to their workers over one long-lived ExecuteProcess stream per worker.

A message on an open stream reaches the worker in about a third of the time
of a new unary call, for half the CPU (``python -m bench.floor``), and the
launch path pays that hop on every run. A run whose start is persisted is
queued on its worker's line and leaves with the next write; runs that become
ready while a write is under way leave together in the following one.

The worker answers each batch, in order, once its runs have started or been
refused. What cannot be known is never guessed in the direction of running a
run twice:

- a batch never written (the stream was already broken) is reported
  UNAVAILABLE: its runs did not start and may go to another worker;
- a batch written but not answered (the stream broke, or no answer within
  ``timeout_s``) may have started: it is reported with the stream's error,
  and the controller takes its runs for lost;
- except on a stream that never connected: its batches, written or not,
  cannot have reached the worker, and are reported UNAVAILABLE too. Two
  signs together say so: the worker's initial metadata (``STREAM_OPEN_METADATA``,
  sent before it reads a run) never came, and the call failed with
  grpc-core's "failed to connect to all addresses", its status when no
  subchannel could be picked for the call, i.e. the call never had a
  transport (a worker killed and not yet swept, its address refusing
  connections). A stream that broke after it connected fails otherwise
  ("Socket closed", GOAWAY...): its runs may have started, as above. The
  worker is then left alone (``WorkerEntry.unreachable``) until it is heard
  from again.

The worker sends the ends of the runs it got on a line back on it (``takes_ends``):
each is applied as FinishRun applies it (``ends_received``), then acknowledged
in the line's next request, stored or refused, most often with the runs whose
starts were committed with it. An end the line never acknowledged (it closed
first) comes again by FinishRun, which takes an end already stored as done.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc

from shards import validation as v
from shards._grpc.status import STREAM_OPEN_METADATA, status_code, status_of
from shards.models import Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_controller.workers import WorkerEntry

log = logging.getLogger(__name__)

# What the controller does with each run of a batch: ``code`` is None when the
# worker started it, else why it did not or may not have; the last is the
# worker's count of runs received by its answer (0 without one).
Outcome = Callable[[Run, WorkerEntry, grpc.StatusCode | None, str, int], None]
# Applies the ends a worker sent on its line, as FinishRun does (raises to refuse them whole).
EndsReceived = Callable[[str, Sequence[pb.RunEnd]], Awaitable[None]]
# grpc-core's words when a call found no subchannel to go out on (pick_first's
# and round_robin's picker in TRANSIENT_FAILURE): it was never sent anywhere.
CONNECT_FAILED = "failed to connect to all addresses"


class _Line:
    """One worker's ExecuteProcess stream: runs to write, batches awaiting their answer."""

    def __init__(self, entry: WorkerEntry) -> None:
        self.entry = entry
        self.stub = entry.stub
        # No deadline: the stream lives as long as the worker; each batch has its own.
        self.call: grpc.aio.StreamStreamCall[pb.ExecuteProcessRequest, pb.ExecuteProcessResponse] = (
            entry.stub.ExecuteProcess()  # type: ignore[call-arg]  # no request iterator: we write()
        )
        self.outbox: list[Run] = []
        # The ends received on the line, applied, to acknowledge in its next request.
        self.stored_ends: list[str] = []
        self.refused_ends: list[pb.RunRefusal] = []
        self.unanswered: deque[tuple[list[Run], asyncio.TimerHandle]] = deque()
        self.writing = False
        self.closed = False
        self.opened = False  # the worker's STREAM_OPEN_METADATA came: it has the stream


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
        self._lines: dict[str, _Line] = {}
        self.ends_received: EndsReceived | None = None  # None: the worker sends its ends by FinishRun

    def send(self, run: Run, entry: WorkerEntry) -> None:
        """Queue ``run`` on ``entry``'s line; it leaves now unless a write is under way."""
        line = self._line(entry)
        line.outbox.append(run)
        self._wake_writer(line)

    def _wake_writer(self, line: _Line) -> None:
        if not line.writing and not line.closed:
            line.writing = True
            self._spawn(self._write(line))

    def close(self) -> None:
        """End every line, reporting nothing: the controller stops leading, and its successor
        learns from the workers' heartbeats which runs started."""
        for line in list(self._lines.values()):
            self._fail(line, grpc.StatusCode.CANCELLED, "", report=False)

    def _line(self, entry: WorkerEntry) -> _Line:
        line = self._lines.get(entry.worker_id)
        if line is not None and line.stub is entry.stub and not line.closed:
            line.entry = entry  # re-registered at the same address: same channel, same stream
            return line
        if line is not None:  # the worker moved: its old stream goes
            self._fail(line, grpc.StatusCode.UNAVAILABLE, f"worker {entry.worker_id} re-registered")
        line = self._lines[entry.worker_id] = _Line(entry)
        self._spawn(self._read(line))
        return line

    async def _write(self, line: _Line) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (line.outbox or line.stored_ends or line.refused_ends) and not line.closed:
                batch = line.outbox[: v.MAX_RUNS_PER_BATCH]
                del line.outbox[: len(batch)]
                request = pb.ExecuteProcessRequest(
                    takes_ends=self.ends_received is not None,
                    stored_ends=line.stored_ends,
                    refused_ends=line.refused_ends,
                    runs=[
                        pb.RunToExecute(
                            run_id=run.run_id,
                            scope_id=run.scope_id,
                            process_id=run.process_id,
                            parent_run_id=run.parent_run_id,
                            attempt=run.attempt,
                        )
                        for run in batch
                    ],
                )
                line.stored_ends, line.refused_ends = [], []
                if not batch:  # acknowledgements alone: the worker does not answer them
                    try:
                        await line.call.write(request)
                    except Exception as error:
                        self._fail(line, grpc.StatusCode.UNAVAILABLE, f"the stream ended: {error}")
                    continue
                expiry = loop.call_later(self._timeout_s, self._expire, line)
                line.unanswered.append((batch, expiry))
                try:
                    await line.call.write(request)
                except Exception as error:
                    if line.closed:
                        return  # closed during the write: the batch was reported with the others
                    # The stream is over and this batch never left.
                    line.unanswered.pop()
                    expiry.cancel()
                    self._report(line, batch, grpc.StatusCode.UNAVAILABLE, f"not sent: {error}")
                    self._fail(line, grpc.StatusCode.UNAVAILABLE, f"the stream ended: {error}")
        finally:
            line.writing = False

    async def _read(self, line: _Line) -> None:
        code, details = grpc.StatusCode.UNKNOWN, "the worker ended the stream"
        try:
            # Empty when the call failed before the worker answered anything.
            metadata = await line.call.initial_metadata()
            line.opened = metadata is not None and STREAM_OPEN_METADATA in tuple(metadata)
            async for reply in line.call:
                if reply.ends and self.ends_received is not None:
                    self._spawn(self._take_ends(line, list(reply.ends)))
                if reply.ends_only:
                    continue
                if not line.unanswered:
                    code, details = grpc.StatusCode.INTERNAL, "the worker answered a batch never sent"
                    break
                batch, expiry = line.unanswered.popleft()
                expiry.cancel()
                refused = {r.run_id: r for r in reply.refused}
                for run in batch:
                    refusal = refused.get(run.run_id)
                    if refusal is None:
                        self._outcome(run, line.entry, None, "", reply.received)
                    else:
                        self._outcome(run, line.entry, status_code(refusal.code), refusal.message, 0)
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        except asyncio.CancelledError:
            # Either the line was closed (the closer reported what had to be)
            # or the controller is shutting down (the next leader reconciles).
            self._fail(line, grpc.StatusCode.CANCELLED, "", report=False)
            raise
        self._fail(line, code, details)

    async def _take_ends(self, line: _Line, ends: list[pb.RunEnd]) -> None:
        """Apply ``ends`` (taken or refused whole, as by FinishRun), then acknowledge them."""
        assert self.ends_received is not None
        try:
            await self.ends_received(line.entry.worker_id, ends)
        except Exception as error:
            code, message, _ = status_of(error, "ExecuteProcess")
            line.refused_ends += [
                pb.RunRefusal(run_id=e.run_id, code=code.value[0], message=message) for e in ends
            ]
        else:
            line.stored_ends += [end.run_id for end in ends]
        self._wake_writer(line)

    def _expire(self, line: _Line) -> None:
        self._fail(
            line,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"worker {line.entry.worker_id} did not answer within {self._timeout_s:g} s",
        )

    def _fail(self, line: _Line, code: grpc.StatusCode, details: str, *, report: bool = True) -> None:
        """Close ``line``: its unanswered batches get ``code``, its unsent runs UNAVAILABLE."""
        if line.closed:
            return
        line.closed = True
        if self._lines.get(line.entry.worker_id) is line:
            del self._lines[line.entry.worker_id]
        line.call.cancel()
        never_connected = (
            code is grpc.StatusCode.UNAVAILABLE and not line.opened and CONNECT_FAILED in details
        )
        if never_connected:
            line.entry.unreachable = True
        if not report:
            for _, expiry in line.unanswered:
                expiry.cancel()
            line.unanswered.clear()
            line.outbox = []
            return
        if never_connected:
            details = f"not sent: worker {line.entry.worker_id} could not be reached: {details}"
        elif code is grpc.StatusCode.UNAVAILABLE:
            # Sent but unanswered is "may have started", never "did not start".
            code = grpc.StatusCode.UNKNOWN
        while line.unanswered:
            batch, expiry = line.unanswered.popleft()
            expiry.cancel()
            self._report(line, batch, code, details)
        unsent, line.outbox = line.outbox, []
        self._report(line, unsent, grpc.StatusCode.UNAVAILABLE, f"not sent: {details}")

    def _report(self, line: _Line, runs: list[Run], code: grpc.StatusCode, details: str) -> None:
        if runs:
            log.warning("worker %s: %d run(s): %s: %s", line.entry.worker_id, len(runs), code.name, details)
        for run in runs:
            self._outcome(run, line.entry, code, details, 0)
