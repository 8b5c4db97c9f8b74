"""Running a controller: gRPC server + leadership + store, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from shards._aio import cancel_and_wait
from shards._grpc.server import build_server, set_serving
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.config import ControllerConfig
from shards_controller.controller import Controller
from shards_controller.leadership import Leadership
from shards_controller.service import ProcessControllerService, WorkerRegistryService
from shards_controller.store import Store, open_store

log = logging.getLogger(__name__)

SERVICES = ("ProcessController", "WorkerRegistry")


def _with_port(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class ControllerServer:
    """A controller you can start and stop from a test or ``shards controller``."""

    def __init__(self, config: ControllerConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config.store)
        self.controller = Controller(config, self.store)
        self.port = 0
        self._leadership: Leadership | None = None
        self._leadership_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.controller.config.address

    async def start(self) -> None:
        await self.store.open()
        controller = self.controller
        server, port, health = build_server(
            self.config.listen,
            [
                lambda s: pb_grpc.add_ProcessControllerServicer_to_server(
                    ProcessControllerService(controller), s
                ),
                lambda s: pb_grpc.add_WorkerRegistryServicer_to_server(WorkerRegistryService(controller), s),
            ],
            SERVICES,
        )
        self.port = port
        advertised = self.config.advertise_address or _with_port(self.config.listen, port)
        controller.config = replace(self.config, advertise_address=advertised)
        self._server = server
        await set_serving(health, SERVICES, False)

        async def on_change(leading: bool) -> None:
            await set_serving(health, SERVICES, leading)

        await server.start()
        self._leadership = Leadership(controller, self.store, on_change)
        self._leadership_task = asyncio.create_task(self._leadership.run(), name="leadership")
        log.info("controller %s listening on %s", self.config.controller_id, advertised)

    async def wait_leading(self, timeout_s: float = 10.0) -> None:
        assert self._leadership is not None
        await asyncio.wait_for(self._leadership.leading.wait(), timeout_s)

    async def stop(self, grace_s: float = 1.0) -> None:
        await cancel_and_wait([self._leadership_task])
        was_leader = self.controller.is_leader
        # Step down first: during the server's grace period workers cannot reach
        # us, and a sweeper still running would mark their runs lost.
        await self.controller.step_down()
        if was_leader and self._leadership is not None:
            await self._leadership.release()
        await self._server.stop(grace_s)
        await self.store.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def run_controller(config: ControllerConfig) -> None:
    """Run until cancelled (SIGINT/SIGTERM are turned into a cancel by the CLI)."""
    server = ControllerServer(config)
    await server.start()
    try:
        # Shielded: cancelling us must not cancel grpc's own shutdown future,
        # which ``stop`` below still needs.
        await asyncio.shield(server.wait_for_termination())
    finally:
        await server.stop()
