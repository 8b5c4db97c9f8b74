"""Real controllers and workers on port 0, run on a background event-loop thread.

Tests stay synchronous and talk to them through the real ``shards.Client``
over loopback gRPC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from shards import Client
from shards._grpc.credentials import TlsConfig
from shards_controller.config import ControllerConfig
from shards_controller.server import ControllerServer
from shards_controller.store import Store, open_store
from shards_worker import WorkerApp, WorkerServer
from shards_worker.server import WorkerSecurity
from tests.support.apps import APP
from tests.support.waiting import assert_eventually

T = TypeVar("T")

FAST = dict(
    worker_timeout_s=1.0,
    heartbeat_interval_s=0.2,
    sweep_interval_s=0.05,
    lease_ttl_s=1.0,
    progress_flush_interval_s=0.1,
)


class Cluster:
    """A controller (``start_controller``) and workers (``start_worker``) on a private loop.

    A secured cluster: pass ``auth_policy``, ``tls_cert`` ... as controller
    config, ``client_token`` / ``client_tls`` for ``client``, and
    ``worker_security`` (a WorkerSecurity) for every ``start_worker``.
    """

    def __init__(
        self,
        store_uri: str,
        *,
        client_token: str = "",
        client_tls: TlsConfig | None = None,
        worker_security: WorkerSecurity | None = None,
        **config: Any,
    ) -> None:
        self.store_uri = store_uri
        self.config_overrides = {**FAST, **config}
        self.client_token = client_token
        self.client_tls = client_tls
        self.worker_security = worker_security
        self._extra_clients: list[Client] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cluster", daemon=True)
        self._thread.start()
        self.controller: ControllerServer | None = None
        self.workers: list[WorkerServer] = []
        self._client: Client | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            # Say where it hangs: every task of the cluster's loop, with its stack.
            tasks = "\n".join(
                f"{task!r}\n"
                + "".join(
                    f"    {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}\n" for f in task.get_stack()
                )
                for task in asyncio.all_tasks(self.loop)
            )
            raise TimeoutError(f"no result in {timeout_s} s; the cluster's tasks:\n{tasks}") from None

    # ------------------------------------------------------------ controller

    def make_store(self) -> Store:
        return open_store(self.store_uri)

    def start_controller(self, timeout_s: float = 30.0, **overrides: Any) -> ControllerServer:
        """``timeout_s``: for it to lead (a store of 10,000 big records takes seconds to load)."""
        settings = {"listen": "127.0.0.1:0", "store": self.store_uri, **self.config_overrides, **overrides}
        config = ControllerConfig(**settings)

        async def start() -> ControllerServer:
            server = ControllerServer(config)
            await server.start()
            await server.wait_leading(timeout_s / 2)
            return server

        self.controller = self.run(start(), timeout_s)
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
            self._client = Client(self.address, token=self.client_token, tls=self.client_tls)
        return self._client

    def make_client(self, token: str = "", tls: TlsConfig | None = None, **options: Any) -> Client:
        """Another client (closed with the cluster), e.g. with another principal's token."""
        client = Client(self.address, token=token, tls=tls, **options)
        self._extra_clients.append(client)
        return client

    # ------------------------------------------------------------ workers

    def start_worker(self, app: WorkerApp = APP, capacity: int = 4, **options: Any) -> WorkerServer:
        if self.worker_security is not None:
            options.setdefault("security", self.worker_security)

        async def start() -> WorkerServer:
            worker = WorkerServer(app, self.address, capacity=capacity, progress_interval_s=0.02, **options)
            await worker.start()
            await asyncio.wait_for(worker.registered.wait(), 10)
            return worker

        worker = self.run(start())
        self.workers.append(worker)
        return worker

    def define_then_leave(self, *scopes: str, app: WorkerApp = APP) -> None:
        """Define ``scopes`` from a worker that then goes (and is seen to be gone).

        A launch needs a catalog: this leaves one behind with no live worker,
        for tests of runs that wait for a worker.
        """
        worker = self.start_worker(app)
        for scope in scopes:
            self.client.define_processes(scope)
        self.stop_worker(worker)
        assert_eventually(lambda: not any(w.alive for w in self.client.list_workers()))

    def stop_worker(self, worker: WorkerServer, grace_s: float = 2.0) -> None:
        self.run(worker.stop(grace_s))
        self.workers.remove(worker)

    def close(self) -> None:
        for client in [*self._extra_clients, *([self._client] if self._client is not None else [])]:
            with contextlib.suppress(Exception):
                client.close()
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
