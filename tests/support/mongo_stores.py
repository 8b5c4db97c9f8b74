"""Fixtures and helpers of the MongoDB store's own tests (``test_mongo_store``, ``test_mongo_log``).

``backend_target``: a fresh database on the session's FerretDB/PostgreSQL, then on FerretDB/SQLite
(each test runs on both); ``two_stores``: two opened stores on it, what two controllers would hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shards.models import ProcessRecord, Run
from shards.states import ProcessState
from shards_controller.store.mongo import MongoStore
from tests.support.mongo import MongoTarget
from tests.support.waiting import assert_eventually_async

S = ProcessState
T0 = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
LONG = timedelta(seconds=30)
SHORT = timedelta(milliseconds=300)


@pytest.fixture(params=["mongo", "mongo-sqlite"])
def backend_target(request: pytest.FixtureRequest) -> MongoTarget:
    fixture = "fresh_mongo" if request.param == "mongo" else "fresh_mongo_sqlite"
    found: MongoTarget = request.getfixturevalue(fixture)
    return found


@pytest.fixture
def two_stores(backend_target: MongoTarget, aio_runner: asyncio.Runner) -> Iterator[list[MongoStore]]:
    """Two opened stores on one database: what two controllers would hold."""
    opened = [backend_target.store(), backend_target.store()]
    for store in opened:
        aio_runner.run(store.open())
    yield opened
    for store in opened:
        aio_runner.run(store.close())


def record(process_id: str = "p1", **fields: Any) -> ProcessRecord:
    return ProcessRecord(scope_id="s1", process_id=process_id, **fields)


def run(run_id: str, process_id: str = "p1", **fields: Any) -> Run:
    fields.setdefault("created_at", T0)
    return Run(run_id=run_id, scope_id="s1", process_id=process_id, **fields)


async def take_over(store: MongoStore, holder_id: str) -> int:
    async def taken() -> int:
        lease = await store.acquire_lease(holder_id, f"{holder_id}:1", LONG)
        assert lease is not None, "the old lease has not expired yet"
        return lease.term

    return await assert_eventually_async(taken, timeout_s=5)
