"""Real controllers and workers on port 0, run on a background event-loop thread.

Tests stay synchronous and talk to them through the real ``shards.Client``
over loopback gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from shards import Client
from shards_controller.config import ControllerConfig
from shards_controller.server import ControllerServer
from shards_controller.store import Store, open_store
from shards_worker import WorkerApp, WorkerServer
from tests.support.apps import APP

T = TypeVar("T")

FAST = dict(
    worker_timeout_s=1.0,
    heartbeat_interval_s=0.2,
    sweep_interval_s=0.05,
    lease_ttl_s=1.0,
    progress_flush_interval_s=0.1,
)


class Cluster:
    def __init__(self, store_uri: str, **config: Any) -> None:
        self.store_uri = store_uri
        self.config_overrides = {**FAST, **config}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cluster", daemon=True)
        self._thread.start()
        self.controller: ControllerServer | None = None
        self.workers: list[WorkerServer] = []
        self._client: Client | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    # ------------------------------------------------------------ controller

    def make_store(self) -> Store:
        return open_store(self.store_uri)

    def start_controller(self, **overrides: Any) -> ControllerServer:
        settings = {"listen": "127.0.0.1:0", "store": self.store_uri, **self.config_overrides, **overrides}
        config = ControllerConfig(**settings)

        async def start() -> ControllerServer:
            server = ControllerServer(config)
            await server.start()
            await server.wait_leading(15)
            return server

        self.controller = self.run(start())
        return self.controller

    def stop_controller(self) -> None:
        if self.controller is not None:
            self.run(self.controller.stop())
            self.controller = None

    @property
    def address(self) -> str:
        assert self.controller is not None
        return self.controller.address

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.address)
        return self._client

    # ------------------------------------------------------------ workers

    def start_worker(self, app: WorkerApp = APP, capacity: int = 4, **options: Any) -> WorkerServer:
        async def start() -> WorkerServer:
            worker = WorkerServer(app, self.address, capacity=capacity, progress_interval_s=0.02, **options)
            await worker.start()
            await asyncio.wait_for(worker.registered.wait(), 10)
            return worker

        worker = self.run(start())
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: WorkerServer, grace_s: float = 2.0) -> None:
        self.run(worker.stop(grace_s))
        self.workers.remove(worker)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for worker in list(self.workers):
            with contextlib.suppress(Exception):
                self.stop_worker(worker, grace_s=0.5)
        try:
            self.stop_controller()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def embedded_uri(tmp_path: Path) -> str:
    return str(tmp_path / "shards.db")
