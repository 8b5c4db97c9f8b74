"""Starting a grpc.aio server with reflection and the standard health service.

``guarded_handler`` wraps a method handler so that an interceptor can check
the caller (with the call's context: metadata, client certificate) before the
servicer runs, and so that a request that is not a valid protobuf message is
answered INVALID_ARGUMENT rather than gRPC's own INTERNAL.
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shards.errors import InvalidArgument, ShardsError
from shards.processmanager.v1 import processmanager_pb2 as pb

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Keep idle streams (watches, worker event streams) alive through NATs
    # and notice dead peers.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def service_name(service: str) -> str:
    return pb.DESCRIPTOR.services_by_name[service].full_name


def build_server(
    listen: str,
    add_servicers: Iterable[Callable[[grpc.aio.Server], None]],
    services: Iterable[str],
    interceptors: Iterable[Any] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, Any]:
    """A server with our services, reflection and health; returns it and its bound port.

    With ``credentials`` the port speaks TLS only; without, plaintext only.
    """
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=list(interceptors))
    for add in add_servicers:
        add(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [service_name(s) for s in services]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port, health_servicer


async def set_serving(health_servicer: Any, services: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *(service_name(s) for s in services)]:
        await health_servicer.set(name, status)


# ---------------------------------------------------------------- guarded handlers

Context = grpc.aio.ServicerContext[Any, Any]
Guard = Callable[[Context], contextlib.AbstractAsyncContextManager[None]]


class _Malformed:
    """Stands for a request that could not be parsed."""

    def __repr__(self) -> str:
        return "<malformed request>"


MALFORMED = _Malformed()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return MALFORMED

    return deserialize


def _malformed(method: str) -> InvalidArgument:
    return InvalidArgument(f"the request to {method} is not a valid protobuf message of its type")


async def _abort(context: Context, error: ShardsError) -> None:
    await context.abort(error.code, error.message)


async def _enter(stack: contextlib.AsyncExitStack, guard: Guard, context: Context) -> None:
    try:
        await stack.enter_async_context(guard(context))
    except ShardsError as error:
        await _abort(context, error)


def guarded_handler(handler: Any, guard: Guard, method: str = "") -> Any:
    """``handler`` with ``guard(context)`` entered around each call (a ShardsError aborts the call).

    A request (or a streamed request message) that does not parse is refused
    with INVALID_ARGUMENT once the guard has let the call in.
    """
    deserializer = _tolerant(handler.request_deserializer)
    serializer = handler.response_serializer
    name = method or "this method"

    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def guarded_unary_unary(request: Any, context: Context) -> Any:
            async with contextlib.AsyncExitStack() as stack:
                await _enter(stack, guard, context)
                if request is MALFORMED:
                    await _abort(context, _malformed(name))
                result = unary_unary(request, context)
                return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(guarded_unary_unary, deserializer, serializer)

    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def guarded_unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async with contextlib.AsyncExitStack() as stack:
                await _enter(stack, guard, context)
                if request is MALFORMED:
                    await _abort(context, _malformed(name))
                result = unary_stream(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result
                else:
                    for item in result:
                        yield item

        return grpc.unary_stream_rpc_method_handler(guarded_unary_stream, deserializer, serializer)

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if request is MALFORMED:
                raise _malformed(name)
            yield request

    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def guarded_stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            async with contextlib.AsyncExitStack() as stack:
                await _enter(stack, guard, context)
                try:
                    result = stream_unary(checked(requests), context)
                    return await result if inspect.isawaitable(result) else result
                except ShardsError as error:
                    await _abort(context, error)

        return grpc.stream_unary_rpc_method_handler(guarded_stream_unary, deserializer, serializer)

    stream_stream = handler.stream_stream

    async def guarded_stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            await _enter(stack, guard, context)
            try:
                result = stream_stream(checked(requests), context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result
            except ShardsError as error:
                await _abort(context, error)

    return grpc.stream_stream_rpc_method_handler(guarded_stream_stream, deserializer, serializer)


def listen_host(listen: str) -> str:
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(listen: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0, [::] and every other name."""
    host = listen_host(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
