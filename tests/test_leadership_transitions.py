"""A step-down is for the term it names (taking over and stepping down are serialized); a lease that lapsed
while its holder took over is renewed in the term it took over for."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shards._aio import cancel_and_wait
from shards.models import ProcessRecord
from shards_controller.config import ControllerConfig
from shards_controller.controller import Controller
from shards_controller.leadership import Leadership
from shards_controller.store import Lease
from shards_controller.store.embedded import EmbeddedStore
from tests.support.waiting import assert_eventually_async


def test_a_step_down_for_an_earlier_term_leaves_the_current_leadership_alone(tmp_path: Path) -> None:
    """As when a write of term 1 fails as stale after the controller has taken term 2."""

    async def scenario() -> None:
        store = EmbeddedStore(tmp_path / "shards.db")
        await store.open()
        controller = Controller(ControllerConfig(store=str(tmp_path / "shards.db")), store)
        await controller.become_leader(1)
        await controller.step_down(term=1)
        assert not controller.is_leader
        await controller.become_leader(2)
        await controller.step_down(term=1)  # late: term 1 is over
        assert controller.is_leader and controller.term == 2
        await controller.step_down()
        assert not controller.is_leader
        await store.close()

    asyncio.run(scenario())


class _BusyLoadStore(EmbeddedStore):
    """Its first load of the records holds the event loop past the lease's TTL, as decoding
    100,000 records from FerretDB did on a busy machine."""

    busy_s = 0.0

    async def load_records(self) -> list[ProcessRecord]:
        busy, self.busy_s = self.busy_s, 0.0
        time.sleep(busy)  # noqa: ASYNC251 - the loop itself busy, on purpose: no renewal can run
        if busy:
            await asyncio.sleep(0.1)  # the rest of the load, a round trip: a renewal runs meanwhile
        return await super().load_records()


def test_a_lease_that_lapsed_while_taking_over_is_renewed_in_its_term(tmp_path: Path) -> None:
    """Not taken afresh in a new term, which made the loaded controller step down and load again."""

    async def scenario() -> None:
        store = _BusyLoadStore(tmp_path / "shards.db")
        await store.open()
        config = ControllerConfig(store=str(tmp_path / "shards.db"), lease_ttl_s=0.3)
        controller = Controller(config, store)
        store.busy_s = 1.0  # over three TTLs
        leadership = Leadership(controller, store)
        loop = asyncio.create_task(leadership.run())
        try:
            await assert_eventually_async(lambda: controller.is_leader, timeout_s=10)
            leading_since = datetime.now(UTC)

            async def renewed_since() -> Lease:
                lease = await store.read_lease()
                assert lease is not None and lease.expires_at > leading_since + timedelta(seconds=0.35)
                return lease

            lease: Lease = await assert_eventually_async(renewed_since, timeout_s=5)
            assert lease.term == controller.term == 1
            assert controller.is_leader
        finally:
            await cancel_and_wait([loop])
            await controller.step_down()
            await store.close()

    asyncio.run(scenario())
