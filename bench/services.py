"""Starting and stopping what the benchmarks measure, each as a subprocess of its own.

Controllers and workers run ``python -m bench.node`` (the product's
``run_controller`` / ``run_worker``), so neither shares a GIL with the harness.
FerretDB is the one the tests use (``tests.support.ferretdb``: on PostgreSQL or SQLite), Redis is Debian's
``redis-server`` without persistence, the Celery worker is ``bench.celery_side``.
Every process is started in a session of its own and stopped by its id, with
everything it forked (Celery's pool), when the harness ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards import AsyncClient

ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_of_commands(names: tuple[str, ...]) -> float:
    """CPU seconds of every process whose command name contains one of ``names`` (a server's
    children included: each PostgreSQL backend is a process of its own)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if not any(name in comm.read() for name in names):
                    continue
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


@dataclass
class Service:
    """One subprocess, the leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident set size (VmRSS) of the process itself."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to its group, SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        # Whatever it forked and left behind goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def kill9(self) -> None:
        """kill -9 the process (the leader-failover scenario)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(5)


class StartError(RuntimeError):
    pass


class Services:
    """Everything one harness run started; ``stop_all`` ends it all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Service] = []
        self._ferretdbs: list[Any] = []
        workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ generic

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                start_new_session=True,
            )
        service = Service(name, process, log_path)
        self.started.append(service)
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.started:
            self.started.remove(service)

    def stop_all(self) -> None:
        # Workers and Celery first, then controllers, then the stores.
        order = sorted(self.started, key=lambda s: "worker" not in s.name and "celery" not in s.name)
        for service in order:
            with contextlib.suppress(Exception):
                service.stop(timeout_s=5.0)
        self.started.clear()
        for server in self._ferretdbs:
            with contextlib.suppress(Exception):
                server.stop()
        self._ferretdbs.clear()

    # ------------------------------------------------------------ shards

    async def start_controller(
        self,
        store: str,
        *,
        name: str = "",
        leading: bool = True,
        address: str = "",
        timeout_s: float = 30.0,
        extra: tuple[str, ...] = (),
    ) -> Service:
        """A controller (on a free port unless ``address``).

        Returns once it leads or, when not ``leading``, once it answers.
        """
        name = name or f"controller-{uuid.uuid4().hex[:6]}"
        address = address or f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "bench.node", "controller", "--listen", address, "--store", store]
        service = self.spawn(name, [*argv, "--id", name, *extra])
        service.address = address
        await _wait_health(service, serving=leading, timeout_s=timeout_s)
        return service

    async def start_workers(
        self,
        controllers: list[str],
        count: int,
        capacity: int,
        sink: str,
        *,
        prefix: str = "worker",
        extra: tuple[str, ...] = (),
    ) -> list[Service]:
        """``count`` workers; returns once the controller lists every one of them."""
        services = []
        for n in range(count):
            worker_id = f"{prefix}-{n}-{uuid.uuid4().hex[:6]}"
            address = f"127.0.0.1:{free_port()}"
            argv = [sys.executable, "-m", "bench.node", "worker", "--controller", ",".join(controllers)]
            argv += ["--listen", address, "--capacity", str(capacity), "--sink", sink, "--id", worker_id]
            argv += extra
            service = self.spawn(worker_id, argv)
            service.address = address
            services.append(service)
        wanted = {s.name for s in services}
        async with AsyncClient(controllers, timeout_s=2.0) as client:
            deadline = time.monotonic() + 30.0
            while True:
                for service in services:
                    if not service.alive():
                        raise StartError(f"{service.name} exited:\n{service.log_tail()}")
                try:
                    seen = {w.worker_id for w in await client.list_workers() if w.alive}
                except Exception:
                    seen = set()
                if wanted <= seen:
                    return services
                if time.monotonic() > deadline:
                    raise StartError(f"workers did not register within 30 s: {sorted(wanted - seen)}")
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------ FerretDB

    def start_ferretdb(self, handler: str) -> str:
        """A FerretDB on ``handler`` (postgresql, sqlite) on a free loopback port; its URI."""
        from tests.support.ferretdb import start_ferretdb

        data_dir = self.workdir / f"ferretdb-{handler}"
        data_dir.mkdir(exist_ok=True)
        server, why = start_ferretdb(data_dir, handler)
        if why:
            server.stop()
            raise StartError(why)
        self._ferretdbs.append(server)
        return server.uri

    def ferretdb_pids(self) -> dict[str, list[int]]:
        """The FerretDB process (and PostgreSQL's postmaster) of each backend, for CPU figures."""
        pids: dict[str, list[int]] = {}
        for server in self._ferretdbs:
            found = [server.pid] if server.pid else []
            if server.postgresql is not None and server.postgresql.directory is not None:
                pid_file = server.postgresql.directory / "data" / "postmaster.pid"
                with contextlib.suppress(OSError, ValueError, IndexError):
                    found.append(int(pid_file.read_text().split()[0]))
            pids[server.handler] = found
        return pids

    # ------------------------------------------------------------ Redis and Celery

    def start_redis(self) -> tuple[str, Service]:
        """``redis-server`` on loopback, no persistence; its ``redis://`` URL and the service."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise StartError("no redis-server: run bench/install.sh (apt-get install redis-server)")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        service = self.spawn("redis", [*argv, "--dir", str(self.workdir), "--loglevel", "warning"])
        service.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 10.0
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", service
            if not service.alive() or time.monotonic() > deadline:
                raise StartError(f"redis-server did not start:\n{service.log_tail()}")
            time.sleep(0.05)

    def start_celery_worker(self, redis_url: str, concurrency: int, sink: str) -> Service:
        argv = [sys.executable, "-m", "bench.celery_side", "--broker", redis_url]
        argv += ["--concurrency", str(concurrency), "--sink", sink]
        return self.spawn(f"celery-{uuid.uuid4().hex[:6]}", argv)


async def _wait_health(service: Service, *, serving: bool, timeout_s: float) -> None:
    """Until the service's health check says SERVING (or just answers, when not ``serving``)."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not service.alive():
                raise StartError(f"{service.name} exited:\n{service.log_tail()}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if not serving or reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise StartError(
                    f"{service.name} did not become ready in {timeout_s:.0f} s:\n{service.log_tail()}"
                )
            await asyncio.sleep(0.05)
