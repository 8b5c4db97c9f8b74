"""Integration: the client paces its launches under the controller's in-flight limit (issue 10, item 10).

10,000 launches made at once by one client got 4,000 RESOURCE_EXHAUSTED (the
principal's 1,000 requests in flight). The client now holds its own launches
under that (500 at once) and retries one the limit refuses, with backoff (its
idempotency key makes that safe): here, requests of the same principal that
stay in flight fill the controller's limit while launches are made.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shards import AsyncClient
from shards.models import LaunchResult
from shards_worker import ProcessDefinition, WorkerApp
from tests.support.cluster import Cluster, embedded_uri

FEW_APP = WorkerApp.of([ProcessDefinition(f"job-{n}", lambda context: None) for n in range(25)])


def test_a_launch_refused_by_the_in_flight_limit_is_retried_until_there_is_room(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path), max_in_flight_per_principal=5)
    try:
        cluster.start_controller()
        cluster.define_then_leave("many", app=FEW_APP)

        async def scenario() -> list[LaunchResult | BaseException]:
            async with AsyncClient(cluster.address, timeout_s=30, retry_deadline_s=30) as client:
                # Requests of the same principal that stay in flight: runs waited for, 5 of them.
                never = [await client.launch_process("many", f"job-{n}") for n in range(5)]
                waits = [asyncio.ensure_future(client.wait_run(r.run_id, 1.5)) for r in never]
                await asyncio.sleep(0.3)
                launches = await asyncio.gather(
                    *(client.launch_process("many", f"job-{n}") for n in range(5, 25)), return_exceptions=True
                )
                await asyncio.gather(*waits, return_exceptions=True)
                return launches

        outcomes = asyncio.run(scenario())
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    finally:
        cluster.close()
