"""Errors as JSON: the controller's gRPC status mapped to an HTTP status, in one place.

Every error the GUI server answers is ``{"error": {"status", "code", "message"}}``
with one of the documented statuses; nothing answers a traceback.
"""

from __future__ import annotations

import grpc
import orjson
from aiohttp import web

from shards.errors import ShardsError

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
#: What a gRPC status not in the table (INTERNAL, UNKNOWN ...) becomes: the controller failed.
BAD_GATEWAY = 502

_CODE_OF_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "FAILED_PRECONDITION",
    413: "REQUEST_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """A request the GUI server refuses itself (before asking the controller)."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODE_OF_HTTP.get(status, "ERROR")


def json_error(status: int, code: str, message: str) -> web.Response:
    body = orjson.dumps({"error": {"status": status, "code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json")


def from_shards_error(error: ShardsError) -> web.Response:
    code = error.code
    status = HTTP_STATUS.get(code, BAD_GATEWAY)
    message = error.message
    if status == BAD_GATEWAY:
        message = f"the controller failed ({code.name}): {message}"
    return json_error(status, code.name, message)


def from_api_error(error: ApiError) -> web.Response:
    return json_error(error.status, error.code, error.message)
