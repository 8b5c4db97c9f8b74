"""Domain errors -> gRPC status, in one place for every server.

``handle_errors`` wraps unary handlers and ``handle_stream_errors`` wraps
server-streaming handlers: a ``ShardsError`` becomes its status with its
message; anything else becomes INTERNAL with a short message (the details go
to the log, never to the caller).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shards.errors import InvalidArgument, ShardsError

log = logging.getLogger(__name__)

LEADER_METADATA_KEY = "shards-leader"
# Sent by a worker as the initial metadata of its ExecuteProcess stream before
# it reads a run: the controller knows the stream reached the worker's code.
STREAM_OPEN_METADATA = ("shards-stream", "open")

# A status carried in a message (a run's refusal, a streamed launch's failure)
# is its number: ``status_code`` turns it back into the enum, UNKNOWN if unknown.
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def rpc_error(code: grpc.StatusCode, details: str, leader: str = "") -> grpc.aio.AioRpcError:
    """The error a call ending with this status raises (``leader``: the shards-leader trailer)."""
    trailing = grpc.aio.Metadata((LEADER_METADATA_KEY, leader)) if leader else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)


Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_of(error: BaseException, method: str) -> tuple[grpc.StatusCode, str, str]:
    """The status an error ends ``method`` with: code, message, and the leader's address (or '')."""
    if isinstance(error, ValueError) and not isinstance(error, ShardsError):
        error = InvalidArgument(str(error))
    if isinstance(error, ShardsError):
        return error.code, error.message, getattr(error, "leader_address", "")
    log.exception("internal error in %s", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log", ""


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: BaseException, method: str) -> None:
    code, message, leader = status_of(error, method)
    if leader:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
    await context.abort(code, message)


def handle_errors(
    handler: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        # Shielded: a caller that gives up (deadline, cancel) must not cut an
        # operation short between staging a change and finishing it; the
        # operation completes and only its answer is lost.
        operation = asyncio.ensure_future(handler(self, request, context))
        try:
            return await asyncio.shield(operation)
        except asyncio.CancelledError:
            operation.add_done_callback(functools.partial(_after_caller_left, handler.__name__))
            raise
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await abort_with(context, error, handler.__name__)
            raise  # unreachable: abort raises

    return wrapper


def _after_caller_left(method: str, operation: asyncio.Future[Any]) -> None:
    """What an operation whose caller gave up ended with: told in a line of the log (its
    error would otherwise be a "Task exception was never retrieved" traceback)."""
    if operation.cancelled():
        return
    error = operation.exception()
    if error is not None:
        log.info("%s ended after its caller had gone: %s: %s", method, type(error).__name__, error)


def handle_stream_errors(
    handler: Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in handler(self, request, context):
                yield item
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await abort_with(context, error, handler.__name__)

    return wrapper
