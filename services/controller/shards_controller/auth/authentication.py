"""Authentication: every protected call is given its caller (or refused) before the servicer runs."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from shards._grpc.server import guarded_handler
from shards.errors import ShardsError
from shards_controller.auth.authorization import Authorizer
from shards_controller.auth.limits import Limits
from shards_controller.auth.principals import CURRENT_CALLER, Caller, limit_key

log = logging.getLogger(__name__)

#: Methods under this prefix need a credential; health and reflection stay open.
PROTECTED_PREFIX = "/shards.processmanager.v1."


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates every call under PROTECTED_PREFIX and counts it against its caller's limit.

    Streams (watches, worker event streams) are long-lived: they do not count
    as requests in flight; watches have their own limit, taken by the servicer.
    """

    def __init__(self, authorizer: Authorizer, limits: Limits, prefix: str = PROTECTED_PREFIX) -> None:
        self._authorizer = authorizer
        self._limits = limits
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        counted = not (handler.request_streaming or handler.response_streaming)
        guard = functools.partial(self._guard, method=method, counted=counted)
        return guarded_handler(handler, guard, method.rsplit("/", 1)[-1])

    @contextlib.asynccontextmanager
    async def _guard(
        self, context: grpc.aio.ServicerContext[Any, Any], *, method: str, counted: bool
    ) -> AsyncIterator[None]:
        try:
            principal = await self._authorizer.authenticate(context.invocation_metadata())
        except ShardsError as error:
            # Never the token itself: only that a call was refused, and why.
            log.info("refused %s from %s: %s", method, context.peer(), error.message)
            raise
        caller = Caller(principal, limit_key(principal, context.peer()))
        token = CURRENT_CALLER.set(caller)
        try:
            if counted:
                with self._limits.in_flight(caller.limit_key):
                    yield
            else:
                yield
        finally:
            with contextlib.suppress(ValueError):  # closed from another context (generator finalizer)
                CURRENT_CALLER.reset(token)
