"""Whole run logs, for the clients: a page from an offset, and following a run's log live.

Every line of a run has an offset (its index in the run's whole log), so a
follower that was cut off (a controller restart, a take-over) resumes from the
last ``next_offset`` it saw and misses nothing, nor sees a line twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from shards._grpc.channel import MAX_RETRY_PAUSE_S, ControllerChannel
from shards.errors import Unavailable, from_rpc_error
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc


@dataclass(frozen=True, slots=True)
class RunLogPage:
    """Lines of a run's log: ``lines[0]`` is at ``offset``; the next page starts at ``next_offset``."""

    lines: tuple[str, ...]
    offset: int
    next_offset: int
    end_offset: int = 0  # the lines the run has logged so far (GetRunLog only)
    dropped: int = 0  # the oldest lines dropped past the log's cap (offsets below it are gone)
    ended: bool = False  # the run has ended and this page reaches its last line (GetRunLog only)


def page_from_proto(reply: pb.GetRunLogResponse) -> RunLogPage:
    return RunLogPage(
        tuple(reply.lines), reply.offset, reply.next_offset, reply.end_offset, reply.dropped, reply.ended
    )


async def follow(
    channel: ControllerChannel, run_id: str, offset: int, resume: bool = True
) -> AsyncIterator[RunLogPage]:
    """Pages of new lines from ``offset`` until the run has ended and all were given.

    With ``resume``, a broken stream (UNAVAILABLE: a restart, a take-over) is
    opened again from the next offset: no line is missed or doubled.
    """
    backoff_s = 0.05
    while True:
        request = pb.FollowRunLogRequest(run_id=run_id, offset=offset)
        stream = pb_grpc.ProcessControllerStub(channel.channel()).FollowRunLog(request)
        try:
            async for message in stream:
                backoff_s = 0.05
                page = RunLogPage(
                    tuple(message.lines), message.offset, message.next_offset, dropped=message.dropped
                )
                offset = page.next_offset
                yield page
            return
        except grpc.aio.AioRpcError as error:
            mapped = from_rpc_error(error)
            if not resume or not isinstance(mapped, Unavailable):
                raise mapped from None
            if not channel.redirect(error):
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_RETRY_PAUSE_S)
        finally:
            stream.cancel()
