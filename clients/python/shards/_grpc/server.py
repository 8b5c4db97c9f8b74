"""Starting a grpc.aio server with reflection and the standard health service."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shards.processmanager.v1 import processmanager_pb2 as pb

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Keep idle streams (watches, worker event streams) alive through NATs
    # and notice dead peers.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def service_name(service: str) -> str:
    return pb.DESCRIPTOR.services_by_name[service].full_name


def build_server(
    listen: str,
    add_servicers: Iterable[Callable[[grpc.aio.Server], None]],
    services: Iterable[str],
    interceptors: Iterable[Any] = (),
) -> tuple[grpc.aio.Server, int, Any]:
    """A server with our services, reflection and health; returns it and its bound port."""
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=list(interceptors))
    for add in add_servicers:
        add(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [service_name(s) for s in services]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port, health_servicer


async def set_serving(health_servicer: Any, services: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *(service_name(s) for s in services)]:
        await health_servicer.set(name, status)
