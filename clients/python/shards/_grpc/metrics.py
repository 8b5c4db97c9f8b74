"""Per-RPC latency by method and status code: a server interceptor for every service.

Labels: ``method`` (``Service/Method``: a fixed set, the services' methods,
health and reflection) and ``code`` (a gRPC status name: 17 at most). A
stream's "latency" is how long it was open; watches and event streams stay
open for hours, so they land in the top bucket and are best read by count.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from prometheus_client.core import Metric

from shards._metrics import LATENCY_BUCKETS, LabeledHistograms, histograms

Context = grpc.aio.ServicerContext[Any, Any]


class RpcMetrics:
    """What the interceptor records: one histogram per (method, code)."""

    def __init__(self, prefix: str = "shards") -> None:
        self.prefix = prefix
        self.latency = LabeledHistograms(LATENCY_BUCKETS)

    def collect(self) -> Iterable[Metric]:
        yield histograms(
            f"{self.prefix}_rpc_duration_seconds",
            "Time from a call's arrival to its status, by method and gRPC status code "
            "(streams: how long they were open)",
            ["method", "code"],
            self.latency,
        )


def _short(method: str) -> str:
    # "/shards.processmanager.v1.ProcessController/LaunchProcess" -> "ProcessController/LaunchProcess"
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def _code(context: Context, error: BaseException | None) -> str:
    if error is None:
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Outermost interceptor: times every call, refused ones (authentication) included."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        self._names: dict[str, tuple[str, ...]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        name = self._names.get(method)
        if name is None:
            if len(self._names) > 1000:  # unknown methods are refused before here; bounded anyway
                return handler
            name = self._names[method] = (_short(method),)
        return _timed(handler, name, self._metrics.latency)


def _timed(handler: Any, name: tuple[str, ...], latency: LabeledHistograms) -> Any:
    clock = time.perf_counter

    def record(started: float, context: Context, error: BaseException | None) -> None:
        latency.observe((*name, _code(context, error)), clock() - started)

    async def finish(result: Any) -> Any:
        return await result if inspect.isawaitable(result) else result

    async def iterate(result: Any) -> AsyncIterator[Any]:
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):
            await result
        else:
            for item in result:
                yield item

    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Context) -> Any:
            started = clock()
            try:
                response = await finish(inner(request, context))
            except BaseException as error:
                record(started, context, error)
                raise
            record(started, context, None)
            return response

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary, handler.request_deserializer, handler.response_serializer)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        started = clock()
        try:
            async for item in iterate(inner_stream(request, context)):
                yield item
        except BaseException as error:
            record(started, context, error)
            raise
        record(started, context, None)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(streaming, handler.request_deserializer, handler.response_serializer)
