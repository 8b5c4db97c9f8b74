"""One error hierarchy for servers and clients, and its mapping to gRPC.

Servers raise these domain errors; ``status_code_for`` maps them to a gRPC
status in one place. Clients turn an ``grpc.RpcError`` back into the same class
with ``from_rpc_error``, so callers catch ``NotFound`` rather than inspect codes.
"""

from __future__ import annotations

import grpc


class ShardsError(Exception):
    """Base of every error this package raises."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ShardsError):
    """The request is malformed (bad id, rate outside 0..1, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ShardsError):
    """The scope, process or run does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ShardsError):
    """The request does not fit the current state (launching an active process, ...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(ShardsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ShardsError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ShardsError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ShardsError):
    """A limit was reached (too many watchers, a watcher too slow, ...)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ShardsError):
    """The server cannot serve now (a standby controller, a worker shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE


class Aborted(ShardsError):
    """The operation was cut short and may be retried (a fenced write by a deposed leader)."""

    code = grpc.StatusCode.ABORTED


class DeadlineExceeded(ShardsError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ShardsError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ShardsError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        AlreadyExists,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        Aborted,
        DeadlineExceeded,
        Internal,
    )
}


def status_code_for(error: ShardsError) -> grpc.StatusCode:
    """The gRPC status a server answers with for ``error``."""
    return error.code


def from_rpc_error(error: grpc.RpcError) -> ShardsError:
    """The domain error for a failed call (ShardsError itself for unmapped codes)."""
    # Sync calls raise grpc.Call subclasses, grpc.aio raises AioRpcError: both
    # offer code() and details().
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = details_of() if callable(details_of) else str(error)
    cls = _BY_CODE.get(code, ShardsError)
    result = cls(details or code.name)
    if cls is ShardsError:
        result.code = code
    return result
