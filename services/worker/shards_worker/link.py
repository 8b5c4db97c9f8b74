"""The worker's side of WorkerRegistry (and the launches its processes make).

With auth on, every call carries the worker's own credential (a worker token,
distinct from client tokens). What the worker sends is cut to the limits the
controller enforces (``shards.validation``): a long log line or progress
message is truncated here rather than refused there, and event batches are
split to stay well under the 4 MiB message limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence

import grpc

from shards import validation as v
from shards._aio import cancel_and_wait
from shards._grpc.channel import ControllerChannel
from shards._grpc.credentials import TlsConfig
from shards.convert import info_to_proto
from shards.errors import from_rpc_error
from shards.models import ProcessInfo
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# Room left for the rest of a batch: an event's log lines are cut (oldest
# first) to fit this many bytes, a batch closes before it grows past twice it.
MAX_EVENT_BYTES = 1024 * 1024
MAX_BATCH_BYTES = 2 * MAX_EVENT_BYTES
# A message of at most this many log lines: the controller takes each message in one turn of its
# loop, so a burst of lines goes in turns of a few milliseconds, between which launches are served.
MAX_BATCH_LINES = 2_000
_FINAL = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
)


def _fit_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit_lines(lines: list[str], byte_budget: int) -> list[str]:
    """The newest lines, each cut to the line limit, that fit the count and byte budget."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines[-v.MAX_LOG_LINES_PER_MESSAGE :]):
        line = _fit_text(line, v.MAX_LOG_LINE_LENGTH)
        used += len(line.encode("utf-8", "replace")) + 4
        if used > byte_budget:
            break
        kept.append(line)
    kept.reverse()
    return kept


def fit_progress(progress: pb.Progress) -> None:
    progress.message = _fit_text(progress.message, v.MAX_MESSAGE_LENGTH)


def _fit_progress_and_lines(message: pb.RunEvent | pb.RunEnd) -> None:
    if message.HasField("progress"):
        fit_progress(message.progress)
    lines = list(message.log_lines)
    fitted = _fit_lines(lines, MAX_EVENT_BYTES)
    if fitted != lines:
        del message.log_lines[:]
        message.log_lines.extend(fitted)


def fit_event(event: pb.RunEvent) -> pb.RunEvent:
    if event.has_log_offset:  # lines with offsets are fitted where they are cut (log_buffer): never here
        if event.HasField("progress"):
            fit_progress(event.progress)
        return event
    _fit_progress_and_lines(event)
    return event


def ends_that_fit(ends: Iterable[pb.RunEnd]) -> int:
    """How many of the oldest ``ends`` one message takes (count and bytes; at least one)."""
    size = count = 0
    for end in ends:
        size += end.ByteSize()
        if count and (count >= v.MAX_RUNS_PER_BATCH or size > MAX_BATCH_BYTES):
            break
        count += 1
    return count


def fit_end(end: pb.RunEnd) -> pb.RunEnd:
    end.error = _fit_text(end.error, v.MAX_ERROR_LENGTH)
    _fit_progress_and_lines(end)
    # The lines not yet stored: the newest that fit (the oldest were most likely
    # received on the stream already; what was not is counted lost there).
    rest = list(end.log_rest)
    if all(map(str.isascii, rest)) and sum(map(len, rest)) + 4 * len(rest) <= MAX_EVENT_BYTES:
        return end  # the usual case: the runner took no more than fits
    fitted = _fit_rest(rest, MAX_EVENT_BYTES)
    if len(fitted) != len(rest):
        del end.log_rest[:]
        end.log_rest.extend(fitted)
        end.log_offset += len(rest) - len(fitted)
    return end


def _fit_rest(lines: list[str], byte_budget: int) -> list[str]:
    used = 0
    for index in range(len(lines) - 1, -1, -1):
        used += (
            len(lines[index]) + 4
            if lines[index].isascii()
            else len(lines[index].encode("utf-8", "replace")) + 4
        )
        if used > byte_budget:
            return lines[index + 1 :]
    return lines


async def fit_batches(
    batches: AsyncIterator[pb.PushRunEventsRequest],
) -> AsyncIterator[pb.PushRunEventsRequest]:
    """Each batch with its events fitted, split where it would pass the count or byte limit."""
    async for batch in batches:
        chunk = pb.PushRunEventsRequest(worker_id=batch.worker_id)
        size = lines = 0
        for event in batch.events:
            fit_event(event)
            event_size = event.ByteSize()
            if chunk.events and (
                len(chunk.events) >= v.MAX_EVENTS_PER_BATCH
                or size + event_size > MAX_BATCH_BYTES
                or lines + len(event.log_lines) > MAX_BATCH_LINES
            ):
                yield chunk
                chunk = pb.PushRunEventsRequest(worker_id=batch.worker_id)
                size = lines = 0
            chunk.events.append(event)
            size += event_size
            lines += len(event.log_lines)
        yield chunk


class ControllerLink:
    """Calls from a worker to the leading controller, retried across a take-over."""

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        tls: TlsConfig | None = None,
        token: str = "",
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``token``: the worker's credential; ``tls``: how to check the controller (None: plaintext)."""
        self.channel = ControllerChannel(addresses, retry_deadline_s=30.0, tls=tls, token=token)
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self._ends: list[tuple[pb.RunEnd, asyncio.Future[None]]] = []
        self._end_sender: asyncio.Task[None] | None = None

    def _registry(self, channel: grpc.aio.Channel) -> pb_grpc.WorkerRegistryAsyncStub:
        return pb_grpc.WorkerRegistryStub(channel)

    async def finish_run(self, worker_id: str, end: pb.RunEnd) -> None:
        """Report the end of a run; return once the controller has it (or refused it for good).

        Ends reported while a call is in flight wait for the next call and go
        together: no delay at low load, a fraction of a call per run under load.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ends.append((fit_end(end), done))
        if self._end_sender is None or self._end_sender.done():
            self._end_sender = asyncio.create_task(self._send_ends(worker_id), name="finish-runs")
        await done

    async def _send_ends(self, worker_id: str) -> None:
        while self._ends:
            batch = self._take_ends()
            try:
                await self._deliver_ends(worker_id, [end for end, _ in batch])
            except Exception as error:  # not a gRPC status: tell the runs' tasks, go on with the next
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    def _take_ends(self) -> list[tuple[pb.RunEnd, asyncio.Future[None]]]:
        """The oldest ends that fit one call (count and bytes)."""
        count = ends_that_fit(end for end, _ in self._ends)
        batch, self._ends = self._ends[:count], self._ends[count:]
        return batch

    async def _deliver_ends(self, worker_id: str, ends: list[pb.RunEnd]) -> None:
        """One FinishRun call, retried until the controller takes it (it is idempotent there)."""
        request = pb.FinishRunRequest(worker_id=worker_id, ends=ends)
        backoff = 0.1
        while True:
            try:
                await self.channel.call(lambda ch: self._registry(ch).FinishRun(request, timeout=5))
                return
            except grpc.aio.AioRpcError as error:
                if error.code() in _FINAL:
                    if len(ends) > 1:
                        # Refused whole: find the end at fault, the others must still land.
                        for end in ends:
                            await self._deliver_ends(worker_id, [end])
                        return
                    log.warning("controller refused the end of run %s: %s", ends[0].run_id, error.details())
                    return
                log.info("reporting the end of %d run(s) failed (%s); retrying", len(ends), error.code().name)
                self.metrics.finish_retries += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def push_events(self, batches: AsyncIterator[pb.PushRunEventsRequest]) -> None:
        """One client stream of progress batches (ends when ``batches`` ends or the stream breaks)."""
        await self._registry(self.channel.channel()).PushRunEvents(fit_batches(batches))

    async def launch_child(
        self,
        scope_id: str,
        process_id: str,
        parent_run_id: str,
        idempotency_key: str,
        definition: ProcessInfo | None,
        preferred_worker_id: str,
    ) -> str:
        request = pb.LaunchProcessRequest(
            scope_id=scope_id,
            process_id=process_id,
            parent_run_id=parent_run_id,
            idempotency_key=idempotency_key,
            definition=info_to_proto(definition) if definition is not None else None,
            preferred_worker_id=preferred_worker_id,
        )
        try:
            reply = await self.channel.call(
                lambda ch: pb_grpc.ProcessControllerStub(ch).LaunchProcess(request, timeout=10)
            )
        except grpc.aio.AioRpcError as error:
            # The project's own error class (FailedPrecondition, NotFound, ...):
            # what process code can catch, never raw gRPC.
            raise from_rpc_error(error) from None
        return reply.run_id

    async def wait_run(self, run_id: str) -> pb.Run:
        """The run once it has ended, or its last attempt when it is retried (waits as long as
        it takes, across take-overs)."""
        request = pb.GetRunRequest(run_id=run_id, wait_until_ended=True, follow_retries=True)
        while True:
            try:
                reply = await self.channel.call(lambda ch: pb_grpc.ProcessControllerStub(ch).GetRun(request))
                return reply.run
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(error) from None
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        await cancel_and_wait([self._end_sender])
        await self.channel.close()
