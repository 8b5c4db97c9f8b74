"""Running a worker: its gRPC server, registration, heartbeats and progress shipping.

Security (``WorkerSecurity``, SECURITY.md): the worker calls the controller
with a worker credential of its own, over TLS when configured; its own server
speaks TLS when given a certificate, and lets only the controller call it: by
the controller's client certificate (mutual TLS) and/or a shared secret.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shards._aio import cancel_and_wait
from shards._grpc.credentials import CallerGuard, ServerTls, TlsConfig, check_token
from shards._grpc.metrics import MetricsInterceptor, RpcMetrics
from shards._grpc.server import build_server, is_loopback, service_name, set_serving
from shards._logging import register_secret
from shards._metrics import MetricsServer, registry_of, start_metrics
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker import metrics
from shards_worker.definition import WorkerApp
from shards_worker.link import ControllerLink
from shards_worker.liveness import Liveness, Registration
from shards_worker.runner import Runner
from shards_worker.service import WorkerService

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _secret_from_env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    path = env.get(f"{name}_FILE", "")
    if not value and path:
        value = Path(path).expanduser().read_text(encoding="utf-8").strip()
    return value


@dataclass(frozen=True, slots=True)
class WorkerSecurity:
    """How a worker proves itself to the controller, and lets only the controller call it.

    ``token``: the worker's credential (a worker entry of the controller's
    policy; the worker id must be one that entry allows). ``controller_tls``:
    TLS to the controller. ``server_tls``: TLS on the worker's own port; with
    ``client_ca`` the controller must show a client certificate signed by it,
    and with ``controller_names`` one carrying one of those names (common name
    or SAN). ``controller_secret``: the controller must send it as a bearer
    token (the controller's ``worker_secret``).
    """

    token: str = field(default="", repr=False)
    controller_tls: TlsConfig | None = None
    server_tls: ServerTls | None = None
    controller_secret: str = field(default="", repr=False)
    controller_names: tuple[str, ...] = ()
    # Listening off loopback with no secret and no mutual TLS lets anyone who
    # can reach the port run code: refused unless this says so.
    allow_insecure_non_loopback: bool = False

    def __post_init__(self) -> None:
        for secret in (self.token, self.controller_secret):
            if secret:
                register_secret(secret)  # never in a log line
                check_token(secret)
        if self.controller_names and not (self.server_tls is not None and self.server_tls.mutual):
            raise ValueError("controller_names needs mutual TLS: a server_tls with a client_ca")

    @property
    def guarded(self) -> bool:
        """True when only the controller can call this worker."""
        return bool(self.controller_secret) or (self.server_tls is not None and self.server_tls.mutual)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSecurity:
        """``SHARDS_WORKER_TOKEN`` (or ``_FILE``); ``SHARDS_TLS_CA``/``CERT``/``KEY``/``SERVER_NAME``
        for the controller; ``SHARDS_WORKER_TLS_CERT``/``KEY``/``CLIENT_CA`` for the worker's port;
        ``SHARDS_WORKER_SECRET`` (or ``_FILE``); ``SHARDS_WORKER_CONTROLLER_NAMES`` (comma-separated)."""
        env = os.environ if environ is None else environ
        cert, key = env.get("SHARDS_WORKER_TLS_CERT", ""), env.get("SHARDS_WORKER_TLS_KEY", "")
        client_ca = env.get("SHARDS_WORKER_TLS_CLIENT_CA", "")
        if (cert or key or client_ca) and not (cert and key):
            raise ValueError("the worker's TLS needs both SHARDS_WORKER_TLS_CERT and SHARDS_WORKER_TLS_KEY")
        names = env.get("SHARDS_WORKER_CONTROLLER_NAMES", "")
        return cls(
            token=_secret_from_env(env, "SHARDS_WORKER_TOKEN"),
            controller_tls=TlsConfig.from_env(env),
            server_tls=ServerTls(cert, key, client_ca) if cert else None,
            controller_secret=_secret_from_env(env, "SHARDS_WORKER_SECRET"),
            controller_names=tuple(n.strip() for n in names.split(",") if n.strip()),
            allow_insecure_non_loopback=env.get("SHARDS_WORKER_ALLOW_INSECURE", "").lower()
            in ("1", "true", "yes", "on"),
        )


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
        security: WorkerSecurity | None = None,
        metrics_listen: str = "",
    ) -> None:
        """``metrics_listen``: serve Prometheus ``/metrics`` there (``PORT`` alone: on 127.0.0.1)."""
        self.app = app
        self.security = security if security is not None else WorkerSecurity()
        self.worker_id = worker_id or default_worker_id()
        self.incarnation = uuid.uuid4().hex
        # Made here, handed to the controller at registration, required of every
        # Worker call: only the controller this worker registered with can call it.
        self.worker_key = secrets.token_urlsafe(32)
        self.capacity = capacity
        self.listen = listen
        self.advertise_address = advertise_address
        self.progress_interval_s = progress_interval_s
        self.controller = controller
        self.metrics = metrics.WorkerMetrics()
        self.rpc_metrics = RpcMetrics()
        self.metrics_listen = metrics_listen
        self.metrics_server: MetricsServer | None = None
        self.link = ControllerLink(
            controller, tls=self.security.controller_tls, token=self.security.token, metrics=self.metrics
        )
        self.address = ""
        self.registered = asyncio.Event()
        # Set when the controller refuses this worker for good (``refusal`` says why).
        self.refused = asyncio.Event()
        self.refusal = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._liveness: Liveness | None = None

    async def start(self) -> None:
        self.runner = Runner(self.app, self.link, self.worker_id, self.capacity, self.progress_interval_s)
        runner = self.runner
        security = self.security
        guard = CallerGuard(
            f"/{service_name('Worker')}/",
            secret=security.controller_secret,
            allowed_peers=security.controller_names,
            key=self.worker_key,
        )
        server, port, health = build_server(
            self.listen,
            [lambda s: pb_grpc.add_WorkerServicer_to_server(WorkerService(runner), s)],
            ("Worker",),
            interceptors=[MetricsInterceptor(self.rpc_metrics), guard],
            credentials=security.server_tls.server_credentials() if security.server_tls else None,
        )
        host = self.listen.rsplit(":", 1)[0]
        if not security.guarded and not is_loopback(self.listen):
            if not security.allow_insecure_non_loopback:
                await server.stop(None)
                raise OSError(
                    f"worker {self.worker_id} would listen on {self.listen} and run code for anyone who "
                    "can reach it: set a controller secret (SHARDS_WORKER_SECRET) or mutual TLS, or "
                    "SHARDS_WORKER_ALLOW_INSECURE=1 on a network you trust"
                )
            log.warning(
                "!!! worker %s listens on %s and takes calls from anyone who can reach it "
                "(allowed by SHARDS_WORKER_ALLOW_INSECURE)",
                self.worker_id,
                self.listen,
            )
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        self.address = self.advertise_address or f"{host}:{port}"
        self._server = server
        registry = registry_of(lambda: metrics.collect(self.metrics, runner.gauges), self.rpc_metrics.collect)
        try:
            self.metrics_server = await start_metrics(registry, self.metrics_listen)
        except OSError:
            await server.stop(None)
            raise
        await server.start()
        await set_serving(health, ("Worker",), True)
        self._liveness = Liveness(
            Registration(
                worker_id=self.worker_id,
                incarnation=self.incarnation,
                address=self.address,
                capacity=self.capacity,
                scopes=list(self.app.scopes),
                running_ids=runner.running_ids,
                runs_received=runner.runs_received,
                run_name=runner.run_name,
                worker_key=self.worker_key,
                logs_stored=runner.logs_stored,
            ),
            self.controller,
            tls=security.controller_tls,
            token=security.token,
            on_registered=self._registered,
            on_refused=self._refused,
        )
        self._liveness.start()
        self._tasks = [asyncio.create_task(runner.ship_progress(), name="progress")]
        log.info("worker %s listening on %s", self.worker_id, self.address)

    def _registered(self) -> None:
        if self.registered.is_set():
            self.metrics.reconnects += 1  # registered again: the controller forgot us, or another leads
        self.runner.resend_logs()  # it lost what it had of the runs' logs: send their tails again
        self.registered.set()

    def _refused(self, reason: str) -> None:
        self.refusal = reason
        self.refused.set()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking runs, let running ones stop (up to ``grace_s``), then close."""
        await self.runner.close(grace_s)
        if self._liveness is not None:
            await self._liveness.stop()
        await cancel_and_wait(self._tasks)
        await self._server.stop(0.5)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
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
