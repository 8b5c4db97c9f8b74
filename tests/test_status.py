"""``handle_errors``: an operation outlives a caller that gives up, and what it ends with is told.

A pure unit test of the wrapper (the servicer context is never reached on these
paths). Before, an operation that failed after its caller had gone (a worker's
RegisterWorker cut by its deadline while the controller stepped down) left
"Task exception was never retrieved" and a traceback in the controller's log.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, cast

import grpc
import pytest

from shards._grpc.status import handle_errors
from shards.errors import Unavailable


class Service:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.finished = False

    @handle_errors
    async def Register(self, request: Any, context: Any) -> str:
        await self.release.wait()
        self.finished = True
        if request == "fail":
            raise Unavailable("the store did not accept the change")
        return "ok"


async def _caller_gives_up(service: Service, request: str) -> None:
    call = asyncio.ensure_future(service.Register(request, cast(grpc.aio.ServicerContext[Any, Any], None)))
    await asyncio.sleep(0)  # the operation is under way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    service.release.set()
    for _ in range(5):  # the operation's end, then its done callbacks
        await asyncio.sleep(0)


def test_an_operation_whose_caller_left_finishes_and_its_failure_is_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unhandled: list[dict[str, Any]] = []

    async def scenario() -> Service:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context))
        service = Service()
        await _caller_gives_up(service, "fail")
        gc.collect()  # where an unretrieved exception would be reported
        return service

    with caplog.at_level(logging.INFO, logger="shards._grpc.status"):
        service = asyncio.run(scenario())
    assert service.finished
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records if r.name == "shards._grpc.status"] == [
        "Register ended after its caller had gone: Unavailable: the store did not accept the change"
    ]


def test_an_operation_whose_caller_left_and_that_succeeds_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Service:
        service = Service()
        await _caller_gives_up(service, "ok")
        return service

    with caplog.at_level(logging.INFO, logger="shards._grpc.status"):
        service = asyncio.run(scenario())
    assert service.finished
    assert [r for r in caplog.records if r.name == "shards._grpc.status"] == []
