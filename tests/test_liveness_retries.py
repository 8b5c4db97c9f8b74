"""The worker's calls to its controllers: retried, never in a spin.

A controller address that refuses connections fails a call in microseconds.
The liveness thread retried at once until the call's deadline (30 s for a
registration), so a worker whose controllers were all down spun a core (found
by a test's worker left behind at 82 % CPU for half an hour).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from shards._grpc.status import LEADER_METADATA_KEY
from shards_worker.liveness import _Controllers


class _Refused(grpc.RpcError):
    def __init__(self, hint: str = "") -> None:
        self._hint = hint

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"

    def trailing_metadata(self) -> Any:
        return ((LEADER_METADATA_KEY, self._hint),) if self._hint else ()


def _counting(calls: list[str], controllers: _Controllers, hint: str = "") -> Any:
    def invoke(stub: object, metadata: object) -> None:
        calls.append(controllers.address)
        raise _Refused(hint if len(calls) == 1 else "")

    return invoke


def test_every_address_down_is_tried_in_rounds_with_a_growing_pause() -> None:
    controllers = _Controllers(["127.0.0.1:1", "127.0.0.1:2"], None, "")
    calls: list[str] = []
    began = time.monotonic()
    with pytest.raises(grpc.RpcError):
        controllers.call(_counting(calls, controllers), 1.0)
    assert time.monotonic() - began >= 1.0
    # Rounds of both addresses, pauses of 0.05, 0.1, 0.2, 0.4 s (then the deadline): ~10 calls, not thousands.
    assert 8 <= len(calls) <= 14, len(calls)
    assert set(calls) == {"127.0.0.1:1", "127.0.0.1:2"}
    controllers.close()


def test_a_leaders_hint_is_followed_at_once() -> None:
    controllers = _Controllers(["127.0.0.1:1"], None, "")
    calls: list[str] = []
    with pytest.raises(grpc.RpcError):
        controllers.call(_counting(calls, controllers, hint="127.0.0.1:9"), 0.2)
    assert calls[:2] == ["127.0.0.1:1", "127.0.0.1:9"]
    controllers.close()


def test_a_worker_that_stops_ends_a_retrying_call_at_once() -> None:
    controllers = _Controllers(["127.0.0.1:1"], None, "")
    calls: list[str] = []
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            controllers.call(_counting(calls, controllers), 30.0)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    began = time.monotonic()
    controllers.interrupt()
    thread.join(2.0)
    assert not thread.is_alive() and time.monotonic() - began < 1.0
    assert isinstance(outcome[0], grpc.RpcError)
    controllers.close()
