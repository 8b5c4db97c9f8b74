"""Running a worker: its gRPC server, registration, heartbeats and progress shipping."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Sequence

import grpc

from shards._aio import cancel_and_wait
from shards._grpc.server import build_server, set_serving
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker.definition import WorkerApp
from shards_worker.link import ControllerLink
from shards_worker.runner import Runner
from shards_worker.service import WorkerService

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerServer:
    """A worker you can start and stop from a test or ``shards worker``."""

    def __init__(
        self,
        app: WorkerApp,
        controller: Sequence[str] | str,
        *,
        listen: str = "127.0.0.1:0",
        advertise_address: str = "",
        capacity: int = 4,
        worker_id: str = "",
        progress_interval_s: float = 0.05,
    ) -> None:
        self.app = app
        self.worker_id = worker_id or default_worker_id()
        self.incarnation = uuid.uuid4().hex
        self.capacity = capacity
        self.listen = listen
        self.advertise_address = advertise_address
        self.progress_interval_s = progress_interval_s
        self.link = ControllerLink(controller)
        self.address = ""
        self.registered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat_interval_s = 1.0

    async def start(self) -> None:
        self.runner = Runner(self.app, self.link, self.worker_id, self.capacity, self.progress_interval_s)
        runner = self.runner
        server, port, health = build_server(
            self.listen,
            [lambda s: pb_grpc.add_WorkerServicer_to_server(WorkerService(runner), s)],
            ("Worker",),
        )
        host = self.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        self.address = self.advertise_address or f"{host}:{port}"
        self._server = server
        await server.start()
        await set_serving(health, ("Worker",), True)
        self._tasks = [
            asyncio.create_task(self._stay_registered(), name="heartbeat"),
            asyncio.create_task(runner.ship_progress(), name="progress"),
        ]
        log.info("worker %s listening on %s", self.worker_id, self.address)

    async def _register(self) -> None:
        reply = await self.link.register(
            pb.RegisterWorkerRequest(
                worker_id=self.worker_id,
                address=self.address,
                capacity=self.capacity,
                scopes=list(self.app.scopes),
                running_run_ids=self.runner.running_ids(),
                incarnation=self.incarnation,
            )
        )
        if reply.HasField("heartbeat_interval"):
            self._heartbeat_interval_s = reply.heartbeat_interval.ToTimedelta().total_seconds() or 1.0
        self.registered.set()
        log.info("worker %s registered with the controller at %s", self.worker_id, self.link.channel.address)

    async def _stay_registered(self) -> None:
        """Register, then heartbeat; register again when the controller forgets us (restart, take-over)."""
        registered = False
        while True:
            try:
                if not registered:
                    await self._register()
                    registered = True
                else:
                    registered = await self.link.heartbeat(
                        pb.HeartbeatRequest(
                            worker_id=self.worker_id,
                            running_run_ids=self.runner.running_ids(),
                            incarnation=self.incarnation,
                        )
                    )
                    if not registered:
                        continue
            except grpc.aio.AioRpcError as error:
                log.warning("controller unreachable (%s): %s", error.code().name, error.details())
                registered = False
                await asyncio.sleep(min(self._heartbeat_interval_s, 0.5))
                continue
            await asyncio.sleep(self._heartbeat_interval_s)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking runs, let running ones stop (up to ``grace_s``), then close."""
        await self.runner.close(grace_s)
        await cancel_and_wait(self._tasks)
        await self._server.stop(0.5)
        await self.link.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def run_worker(app: WorkerApp, controller: Sequence[str] | str, **options: object) -> None:
    """Run a worker until cancelled."""
    server = WorkerServer(app, controller, **options)  # type: ignore[arg-type]
    await server.start()
    try:
        # Shielded: cancelling us must not cancel grpc's own shutdown future.
        await asyncio.shield(server.wait_for_termination())
    finally:
        await server.stop()
