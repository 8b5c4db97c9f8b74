"""Running a controller: gRPC server + leadership + store, started and stopped together.

Security (SECURITY.md): every call to our services goes through
``AuthInterceptor``; the port speaks TLS when a certificate is configured;
without auth and TLS the controller refuses to listen on anything but a
loopback address unless ``allow_insecure_non_loopback`` says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from shards._aio import cancel_and_wait
from shards._grpc.credentials import ServerTls, TlsConfig, check_token
from shards._grpc.metrics import MetricsInterceptor, RpcMetrics
from shards._grpc.server import build_server, is_loopback, set_serving
from shards._logging import register_secret
from shards._metrics import MetricsServer, registry_of, start_metrics
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller import collector, metrics
from shards_controller.auth import AuthInterceptor, Authorizer, Limits
from shards_controller.config import ControllerConfig
from shards_controller.controller import Controller
from shards_controller.leadership import Leadership
from shards_controller.registry_service import WorkerRegistryService
from shards_controller.service import ProcessControllerService
from shards_controller.store import Store, open_store

log = logging.getLogger(__name__)

SERVICES = ("ProcessController", "WorkerRegistry")


def _with_port(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class InsecureConfig(ValueError):
    """The controller would listen on a network without authentication or TLS."""


def server_tls(config: ControllerConfig) -> ServerTls | None:
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key (tls_client_ca alone is not enough)")
    return ServerTls(config.tls_cert, config.tls_key, config.tls_client_ca)


def worker_tls(config: ControllerConfig) -> TlsConfig | None:
    if not (config.worker_tls_ca or config.worker_tls_cert or config.worker_tls_key):
        return None
    if not config.worker_tls_ca:
        raise ValueError("TLS to workers needs worker_tls_ca, the CA their certificates are checked against")
    return TlsConfig(config.worker_tls_ca, config.worker_tls_cert, config.worker_tls_key)


def check_exposure(config: ControllerConfig, authorizer: Authorizer, tls: ServerTls | None) -> None:
    """Refuse a non-loopback listen address without auth and TLS; say so loudly when auth is off."""
    loopback = is_loopback(config.listen)
    missing = [
        what for what, on in (("authentication", authorizer.enabled), ("TLS", tls is not None)) if not on
    ]
    if missing and not loopback:
        if not config.allow_insecure_non_loopback:
            raise InsecureConfig(
                f"refusing to listen on {config.listen} without {' and '.join(missing)}: set auth_policy "
                "and tls_cert/tls_key (SHARDS_AUTH_POLICY, SHARDS_TLS_CERT, SHARDS_TLS_KEY), listen on a "
                "loopback address, or set allow_insecure_non_loopback (SHARDS_ALLOW_INSECURE_NON_LOOPBACK=1) "
                "if something in front of the controller does it"
            )
        log.warning(
            "!!! INSECURE: listening on %s without %s, as allow_insecure_non_loopback says. Make sure "
            "something in front of the controller provides it.",
            config.listen,
            " and ".join(missing),
        )
    if not authorizer.enabled:
        log.warning(
            "!!! AUTHENTICATION IS OFF: anyone who can reach %s may list, launch, stop and purge every "
            "process of every scope, and register as a worker. Set auth_policy (SHARDS_AUTH_POLICY) "
            "to turn it on.",
            config.listen,
        )


class ControllerServer:
    """A controller you can start and stop from a test or ``shards controller``."""

    def __init__(self, config: ControllerConfig, store: Store | None = None) -> None:
        self.config = config
        self.tls = server_tls(config)
        self.authorizer = Authorizer.from_settings(
            config.auth_policy, config.authorize_hook, config.authenticate_hook
        )
        check_exposure(config, self.authorizer, self.tls)
        self.limits = Limits(config.max_in_flight_per_principal, config.max_watchers_per_principal)
        self.store = store if store is not None else open_store(config.store)
        self.controller = Controller(config, self.store)
        if config.worker_secret:
            register_secret(config.worker_secret)  # never in a log line
            check_token(config.worker_secret)  # fail now, not at the first worker's registration
        self.controller.pool.secure(worker_tls(config), config.worker_secret)
        self.port = 0
        self._leadership: Leadership | None = None
        self._leadership_task: asyncio.Task[None] | None = None
        self._leading = asyncio.Event()
        self.rpc_metrics = RpcMetrics()
        controller = self.controller
        self.registry = registry_of(
            lambda: metrics.collect(controller.metrics, controller.gauges), self.rpc_metrics.collect
        )
        self.metrics_server: MetricsServer | None = None

    @property
    def address(self) -> str:
        return self.controller.config.address

    async def start(self) -> None:
        await self.store.open()
        controller, authorizer, limits = self.controller, self.authorizer, self.limits
        registry = WorkerRegistryService(controller, authorizer)
        # A worker sends the end of each run the controller hands it back on the same stream.
        controller.take_ends_on_streams(registry.ends_on_stream)
        server, port, health = build_server(
            self.config.listen,
            [
                lambda s: pb_grpc.add_ProcessControllerServicer_to_server(
                    ProcessControllerService(controller, authorizer, limits), s
                ),
                lambda s: pb_grpc.add_WorkerRegistryServicer_to_server(registry, s),
            ],
            SERVICES,
            # Metrics outermost: refused calls (authentication) are timed too.
            interceptors=[MetricsInterceptor(self.rpc_metrics), AuthInterceptor(authorizer, limits)],
            credentials=self.tls.server_credentials() if self.tls is not None else None,
        )
        self.port = port
        advertised = self.config.advertise_address or _with_port(self.config.listen, port)
        controller.config = replace(self.config, advertise_address=advertised)
        self._server = server
        await set_serving(health, SERVICES, False)

        async def on_change(leading: bool) -> None:
            await set_serving(health, SERVICES, leading)
            if leading:
                self._leading.set()
            else:
                self._leading.clear()

        controller.on_leadership_change = on_change
        self.metrics_server = await start_metrics(self.registry, self.config.metrics_listen)
        await server.start()
        self._leadership = Leadership(controller, self.store)
        self._leadership_task = asyncio.create_task(self._leadership.run(), name="leadership")
        log.info(
            "controller %s listening on %s (auth %s, %s)",
            self.config.controller_id,
            advertised,
            "on" if authorizer.enabled else "OFF",
            ("mutual TLS" if self.tls.mutual else "TLS") if self.tls is not None else "plaintext",
        )

    async def wait_leading(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):  # not wait_for: see Leadership._tick
            await self._leading.wait()

    async def stop(self, grace_s: float = 1.0) -> None:
        await cancel_and_wait([self._leadership_task])
        was_leader = self.controller.is_leader
        # Step down first: during the server's grace period workers cannot reach
        # us, and a sweeper still running would mark their runs lost.
        await self.controller.step_down()
        if was_leader and self._leadership is not None:
            await self._leadership.release()
        await self._server.stop(grace_s)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.store.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def run_controller(config: ControllerConfig) -> None:
    """Run until cancelled (SIGINT/SIGTERM are turned into a cancel by the CLI). The process's
    garbage collector is tuned for it (``collector``)."""
    collector.tune()
    server = ControllerServer(config)
    await server.start()
    try:
        # Shielded: cancelling us must not cancel grpc's own shutdown future,
        # which ``stop`` below still needs.
        await asyncio.shield(server.wait_for_termination())
    finally:
        await server.stop()
