"""A controller leading in-process on a store (embedded by default), no server around it (unit tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from shards_controller.config import ControllerConfig
from shards_controller.controller import Controller
from shards_controller.store import Store
from shards_controller.store.embedded import EmbeddedStore


@contextlib.asynccontextmanager
async def leading_controller(store: Store | None = None) -> AsyncIterator[Controller]:
    """``store`` (an in-memory one by default) opened, and a controller leading on it; both closed after."""
    store = store if store is not None else EmbeddedStore(":memory:")
    await store.open()
    controller = Controller(ControllerConfig(store=":memory:"), store)
    try:
        lease = await store.acquire_lease(controller.config.controller_id, "here", timedelta(seconds=60))
        assert lease is not None
        await controller.become_leader(lease.term)
        yield controller
    finally:
        await controller.step_down()
        await store.close()
