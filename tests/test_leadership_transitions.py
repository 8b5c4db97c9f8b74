"""A step-down is for the term it names (taking over and stepping down are serialized)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shards_controller.config import ControllerConfig
from shards_controller.controller import Controller
from shards_controller.store.embedded import EmbeddedStore


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
