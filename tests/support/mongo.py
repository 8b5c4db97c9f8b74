"""A MongoDB-compatible server for the tests (a pytest plugin, see tests/conftest.py).

``mongodb_uri`` (session): ``MONGODB_URI`` when set; otherwise a FerretDB
started for the session, one per xdist worker, and stopped at the end: on its
PostgreSQL backend (a private PostgreSQL, started first), or on SQLite with
``FERRETDB_HANDLER=sqlite`` (``tests.support.ferretdb``). ``ferretdb_sqlite_uri``
(session) is a FerretDB on SQLite whatever the default, so that the store
contract runs on both backends. Without a server the tests that need one skip,
or fail under CI (``tests.support.required``).

``fresh_mongo`` (function): the URI plus a database of its own, dropped after
the test; ``.store()`` makes an unopened ``MongoStore`` on it, so a test can
play several controllers against one database. ``fresh_mongo_sqlite``: the
same on the SQLite FerretDB.

``mongo_store`` (function): an opened ``MongoStore`` on a fresh database.

Async tests: pymongo's async client belongs to the event loop that opened it,
so fixtures and test must share one loop. ``aio_runner`` is that loop (an
``asyncio.Runner`` per test), and ``async def`` tests run in it (unless
pytest-asyncio is installed, which then owns them).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from shards_controller.store.mongo import MongoStore
from shards_controller.store.mongo_behind import FLUSH_EVERY_S
from tests.support.ferretdb import FerretDB, default_handler, find_ferretdb, ping, start_ferretdb
from tests.support.required import require

__all__ = ["FerretDB", "MongoTarget", "find_ferretdb", "unique_database_name"]


def _ferretdb_session(workdir: Path, handler: str) -> Iterator[str]:
    server, why = start_ferretdb(workdir, handler)
    if why:
        require(False, f"MongoDB (FerretDB on {handler}; {why})")
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URI for the session: ``MONGODB_URI``, or a FerretDB started here."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        error = ping(uri, timeout_s=10.0)
        require(not error, f"MongoDB at MONGODB_URI ({error})")
        yield uri
        return
    handler = default_handler()
    yield from _ferretdb_session(tmp_path_factory.mktemp(f"ferretdb-{handler}"), handler)


@pytest.fixture(scope="session")
def ferretdb_sqlite_uri(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A FerretDB on its SQLite backend (the session's own server when that is one already)."""
    if not os.environ.get("MONGODB_URI") and default_handler() == "sqlite":
        yield request.getfixturevalue("mongodb_uri")
        return
    yield from _ferretdb_session(tmp_path_factory.mktemp("ferretdb-sqlite"), "sqlite")


@dataclass(frozen=True, slots=True)
class MongoTarget:
    """A server and a database of one test's own."""

    uri: str
    database: str

    def store(self, write_behind_s: float = FLUSH_EVERY_S) -> MongoStore:
        """A new, unopened store on this database (one per simulated controller)."""
        return MongoStore(self.uri, self.database, write_behind_s=write_behind_s)


def unique_database_name() -> str:
    return f"shards_test_{uuid.uuid4().hex[:20]}"


def _fresh(uri: str) -> Iterator[MongoTarget]:
    target = MongoTarget(uri, unique_database_name())
    try:
        yield target
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        with client:
            client.drop_database(target.database)
            client.drop_database(f"{target.database}_lease")  # FerretDB/SQLite: mongo_schema.lease_database


@pytest.fixture
def fresh_mongo(mongodb_uri: str) -> Iterator[MongoTarget]:
    """The session's server and a uniquely named database, dropped afterwards."""
    yield from _fresh(mongodb_uri)


@pytest.fixture
def fresh_mongo_sqlite(ferretdb_sqlite_uri: str) -> Iterator[MongoTarget]:
    """A FerretDB on SQLite and a uniquely named database, dropped afterwards."""
    yield from _fresh(ferretdb_sqlite_uri)


@pytest.fixture
def aio_runner() -> Iterator[asyncio.Runner]:
    """The event loop of one test: async fixtures and the ``async def`` test share it."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def mongo_store(fresh_mongo: MongoTarget, aio_runner: asyncio.Runner) -> Iterator[MongoStore]:
    """An opened ``MongoStore`` on a fresh database (dropped afterwards)."""
    store = fresh_mongo.store()
    aio_runner.run(store.open())
    try:
        yield store
    finally:
        aio_runner.run(store.close())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in the test's ``aio_runner`` loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    if pyfuncitem.config.pluginmanager.hasplugin("asyncio"):
        return None  # pytest-asyncio is installed: it runs coroutines
    funcargs: dict[str, Any] = pyfuncitem.funcargs
    parameters = inspect.signature(pyfuncitem.obj).parameters
    coroutine = pyfuncitem.obj(**{name: funcargs[name] for name in parameters if name in funcargs})
    runner = funcargs.get("aio_runner")
    if isinstance(runner, asyncio.Runner):
        runner.run(coroutine)
    else:
        asyncio.run(coroutine)
    return True
