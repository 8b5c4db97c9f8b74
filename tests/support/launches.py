"""LaunchProcesses, called as plainly as a unary RPC (for tables of RPCs and their statuses)."""

from __future__ import annotations

from typing import Any

import grpc

from shards._grpc.status import status_code
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc


class LaunchFailed(grpc.RpcError):
    """A launch the stream answered with a failure, raised as a unary call's error would be."""

    def __init__(self, failed: pb.LaunchFailure) -> None:
        super().__init__(failed.message)
        self._failed = failed

    def code(self) -> grpc.StatusCode:
        return status_code(self._failed.code)

    def details(self) -> str:
        return self._failed.message

    def trailing_metadata(self) -> Any:
        return (("shards-leader", self._failed.leader),) if self._failed.leader else ()


def launch_on_stream(
    channel: grpc.Channel, launches: list[pb.TaggedLaunch], metadata: Any = (), timeout: float = 10
) -> pb.LaunchProcessResponse | None:
    """Send ``launches`` on one LaunchProcesses stream, one per message; the first answer, its failure raised.

    Every launch sent is answered exactly once, with its id (asserted here).
    """
    stub = pb_grpc.ProcessControllerStub(channel)
    messages = (pb.LaunchProcessesRequest(launches=[tagged]) for tagged in launches)
    answers = [
        result
        for reply in stub.LaunchProcesses(messages, metadata=metadata, timeout=timeout)
        for result in reply.results
    ]
    assert sorted(a.request_id for a in answers) == sorted(m.request_id for m in launches)
    if not answers:
        return None
    first = min(answers, key=lambda a: [m.request_id for m in launches].index(a.request_id))
    if first.HasField("failed"):
        raise LaunchFailed(first.failed)
    return first.launched
