"""A launch's key its client made for it is not looked up in a remote store (``new_key``).

The Python client makes an idempotency key when given none, so that a retry is
safe; on the MongoDB store its lookup was a round trip on every launch that
could only miss. The client now says so on the first send (``new_key``) and
not on a retry. A key vouched new that was in fact used is not deduplicated
there; the embedded store, whose reads cost microseconds, looks every key up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shards import ProcessState
from shards.aio import AsyncClient
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from tests.support.cluster import Cluster, embedded_uri
from tests.support.mongo import MongoTarget
from tests.support.ports import free_port
from tests.support.waiting import assert_eventually

S = ProcessState


def _counting_lookups(cluster: Cluster) -> list[str]:
    """The keys the controller's store is asked for (the real store, counted)."""
    assert cluster.controller is not None
    store: Any = cluster.controller.controller.store
    asked: list[str] = []
    lookup = store.find_run_by_idempotency_key

    async def counted(key: str) -> Any:
        asked.append(key)
        return await lookup(key)

    store.find_run_by_idempotency_key = counted
    return asked


@pytest.fixture
def mongo_cluster(fresh_mongo: MongoTarget) -> Iterator[Cluster]:
    cluster = Cluster(f"{fresh_mongo.uri.rstrip('/')}/{fresh_mongo.database}")
    try:
        cluster.start_controller()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.close()


def _raw_launch(cluster: Cluster, key: str, new_key: bool) -> pb.LaunchProcessResponse:
    with grpc.insecure_channel(cluster.address) as channel:
        request = pb.LaunchProcessRequest(
            scope_id="s1", process_id="quick", idempotency_key=key, new_key=new_key
        )
        response: pb.LaunchProcessResponse = pb_grpc.ProcessControllerStub(channel).LaunchProcess(
            request, timeout=10
        )
        return response


def _ended(cluster: Cluster, run_id: str) -> None:
    assert_eventually(lambda: cluster.client.get_run(run_id).state is S.DONE)


def test_on_mongodb_a_clients_own_key_is_not_looked_up_and_a_retry_is(mongo_cluster: Cluster) -> None:
    asked = _counting_lookups(mongo_cluster)
    first = mongo_cluster.client.launch_process("s1", "quick")
    _ended(mongo_cluster, first.run_id)
    assert asked == []
    run = mongo_cluster.client.get_run(first.run_id)
    # The same key again, as a retry sends it: looked up, and answered with the first run.
    again = _raw_launch(mongo_cluster, run.idempotency_key, new_key=False)
    assert again.deduplicated and again.run_id == first.run_id
    assert len(asked) == 1


def test_on_mongodb_a_key_vouched_new_that_was_used_makes_a_new_run(mongo_cluster: Cluster) -> None:
    first = _raw_launch(mongo_cluster, "k-1", new_key=True)
    _ended(mongo_cluster, first.run_id)
    second = _raw_launch(mongo_cluster, "k-1", new_key=True)  # the caller's claim was false
    assert not second.deduplicated and second.run_id != first.run_id
    _ended(mongo_cluster, second.run_id)
    retried = _raw_launch(mongo_cluster, "k-1", new_key=False)
    assert retried.deduplicated and retried.run_id == second.run_id  # the key names the new run
    assert mongo_cluster.client.get_run(first.run_id).state is S.DONE  # the first run is kept


def test_on_the_embedded_store_every_key_is_looked_up(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        cluster.start_worker()
        first = _raw_launch(cluster, "k-1", new_key=True)
        _ended(cluster, first.run_id)
        again = _raw_launch(cluster, "k-1", new_key=True)
        assert again.deduplicated and again.run_id == first.run_id
    finally:
        cluster.close()


_SCHEDULED = pb.ProcessRecord(scope_id="s1", process_id="p1", state=pb.PROCESS_STATE_SCHEDULED, run_id="r1")


class _RefusesFirst(pb_grpc.ProcessControllerServicer):
    """A controller stand-in that records each launch's ``new_key`` and drops the first."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    async def LaunchProcesses(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for batch in requests:
            for tagged in batch.launches:
                self.seen.append(tagged.launch.new_key)
                if len(self.seen) == 1:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "dropped after it was taken")
                yield pb.LaunchProcessesResponse(
                    results=[
                        pb.TaggedLaunchResult(
                            request_id=tagged.request_id,
                            launched=pb.LaunchProcessResponse(run_id="r1", process=_SCHEDULED),
                        )
                    ]
                )


def test_the_client_sends_new_key_on_the_first_attempt_only() -> None:
    async def scenario() -> list[bool]:
        server = grpc.aio.server()
        servicer = _RefusesFirst()  # type: ignore[abstract]  # serves LaunchProcesses alone
        pb_grpc.add_ProcessControllerServicer_to_server(servicer, server)
        address = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with AsyncClient(address) as client:
                result = await client.launch_process("s1", "p1")
            assert result.run_id == "r1"
            return servicer.seen
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == [True, False]
