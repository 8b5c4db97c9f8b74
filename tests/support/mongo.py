"""A MongoDB-compatible server for the tests (a pytest plugin, see tests/conftest.py).

``mongodb_uri`` (session): ``MONGODB_URI`` when set; otherwise a FerretDB
(SQLite backend) started on a free loopback port for the session, one per
xdist worker, and stopped at the end. The binary is ``FERRETDB_BIN``, else the
one ``scripts/install-ferretdb.sh`` caches, else ``ferretdb`` on PATH. Without
a server the tests that need one skip, or fail under CI (``tests.support.required``).

``fresh_mongo`` (function): the URI plus a database of its own, dropped after
the test; ``.store()`` makes an unopened ``MongoStore`` on it, so a test can
play several controllers against one database.

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
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from shards_controller.store.mongo import MongoStore
from tests.support.required import require

FERRETDB_VERSION = "v1.24.2"
START_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.05
_START_ATTEMPTS = 3  # a free port can be taken by another process before FerretDB binds it


def ferretdb_cache_path() -> Path:
    """Where ``scripts/install-ferretdb.sh`` leaves the binary."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "shards" / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"


def find_ferretdb() -> tuple[str | None, str]:
    """The FerretDB binary, or None and why not."""
    explicit = os.environ.get("FERRETDB_BIN")
    if explicit:
        # An explicit choice is never silently replaced by another binary.
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit, ""
        return None, f"FERRETDB_BIN={explicit} is not an executable file"
    cached = ferretdb_cache_path()
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached), ""
    on_path = shutil.which("ferretdb")
    if on_path:
        return on_path, ""
    return None, "no ferretdb binary: run scripts/install-ferretdb.sh, or set FERRETDB_BIN or MONGODB_URI"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(uri: str, timeout_s: float) -> str:
    """'' when the server at ``uri`` answers a ping within ``timeout_s``, else the last error."""
    deadline = time.monotonic() + timeout_s
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout_s * 1000), connectTimeoutMS=1000
    )
    with client:
        while True:
            try:
                client.admin.command("ping")
                return ""
            except PyMongoError as error:
                if time.monotonic() >= deadline:
                    return f"{type(error).__name__}: {error}"
            time.sleep(POLL_INTERVAL_S)


class FerretDB:
    """One FerretDB process with the SQLite backend in ``data_dir``."""

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.uri = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start and wait until it answers; return '' or why it did not start."""
        why = ""
        for attempt in range(_START_ATTEMPTS):
            why = self._try_start(attempt)
            if not why:
                return ""
            self.stop()
        return why

    def _try_start(self, attempt: int) -> str:
        port = free_port()
        log_path = self.data_dir / f"ferretdb-{attempt}.log"
        command = [
            self.binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data_dir}/",
            f"--listen-addr=127.0.0.1:{port}",
            "--telemetry=disable",  # it would otherwise try to reach the internet
            # No debug (metrics/pprof) listener at all: "-" disables it, one port
            # fewer to collide on when every xdist worker runs its own server.
            "--debug-addr=-",
            f"--state-dir={self.data_dir}",  # not the current directory
            "--log-level=error",
        ]
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir
            )
        self.uri = f"mongodb://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                output = log_path.read_text(errors="replace").strip()[-2000:]
                return f"ferretdb exited with {self._process.returncode}: {output}"
            error = ping(self.uri, timeout_s=0.5)
            if not error:
                return ""
            if time.monotonic() >= deadline:
                return f"ferretdb did not answer within {START_TIMEOUT_S:.0f}s: {error}"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URI for the session: ``MONGODB_URI``, or a FerretDB started here."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        error = ping(uri, timeout_s=10.0)
        require(not error, f"MongoDB at MONGODB_URI ({error})")
        yield uri
        return
    binary, why = find_ferretdb()
    if binary is None:
        require(False, f"MongoDB (FerretDB; {why})")
        return
    server = FerretDB(binary, tmp_path_factory.mktemp("ferretdb"))
    why = server.start()
    if why:
        require(False, f"MongoDB (FerretDB; {why})")
    try:
        yield server.uri
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class MongoTarget:
    """A server and a database of one test's own."""

    uri: str
    database: str

    def store(self) -> MongoStore:
        """A new, unopened store on this database (one per simulated controller)."""
        return MongoStore(self.uri, self.database)


def unique_database_name() -> str:
    return f"shards_test_{uuid.uuid4().hex[:20]}"


@pytest.fixture
def fresh_mongo(mongodb_uri: str) -> Iterator[MongoTarget]:
    """The session's server and a uniquely named database, dropped afterwards."""
    target = MongoTarget(mongodb_uri, unique_database_name())
    try:
        yield target
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
        with client:
            client.drop_database(target.database)


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
