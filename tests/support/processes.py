"""Services as subprocesses: ``shards controller`` and ``shards worker`` for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from shards import Client
from tests.support.waiting import assert_eventually

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "shards.cli"]
READY = re.compile(r"controller ready: listening on (\S+)")


def cli_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDS_")}
    # Wide enough that no table cell wraps in the middle of what a test looks for.
    env.update(COLUMNS="250", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Service:
    """A ``shards controller`` or ``shards worker`` subprocess, its output in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log: IO[str] = log_path.open("a")
        self.popen = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=cli_env(**(env or {})),
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float = 30.0) -> re.Match[str]:
        def found() -> re.Match[str]:
            if self.popen.poll() is not None:
                raise RuntimeError(f"exited with {self.popen.returncode}:\n{self.output()}")
            match = pattern.search(self.output())
            assert match is not None, f"{pattern.pattern!r} not in the output yet"
            return match

        return assert_eventually(found, timeout_s=timeout_s, interval_s=0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal, wait, kill if it does not end; the exit status."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signum)
                try:
                    self.popen.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(5)
        finally:
            self._log.close()
        return self.popen.returncode


class Services:
    """A controller and a worker running ``tests.support.apps:APP``."""

    def __init__(self, workdir: Path, worker_id: str) -> None:
        self.worker_id = worker_id
        self.worker: Service | None = None
        self.client: Client | None = None
        self.controller = Service(
            ["controller", "--listen", "127.0.0.1:0", "--store", str(workdir / "shards.db")],
            workdir / "controller.log",
        )
        try:
            self.address = self.controller.wait_for(READY).group(1)
            self.worker = Service(
                ["worker", "tests.support.apps:APP", "--controller", self.address, "--worker-id", worker_id],
                workdir / "worker.log",
            )
            self.client = Client(self.address)
            assert_eventually(self._registered, timeout_s=30, interval_s=0.05)
        except BaseException:
            self.close()  # half started: leave nothing running
            raise

    def _registered(self) -> bool:
        assert self.worker is not None and self.client is not None
        if self.worker.popen.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {self.worker.popen.returncode}:\n{self.worker.output()}"
            )
        return any(w.worker_id == self.worker_id for w in self.client.list_workers())

    @property
    def api(self) -> Client:
        assert self.client is not None
        return self.client

    def close(self) -> None:
        """Stop the worker, then the controller (each is killed if it does not stop)."""
        try:
            if self.client is not None:
                self.client.close()
        finally:
            try:
                if self.worker is not None:
                    self.worker.stop()
            finally:
                self.controller.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessCluster:
    """Controllers and workers as subprocesses on one store, for failover tests.

    Controllers get fixed ports, so one restarted after a kill is found at the
    address the workers and clients were given.
    """

    def __init__(self, workdir: Path, store: str, app: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.store = store
        self.app = app
        self.env = env or {}
        self.ports: dict[str, int] = {}
        self.controllers: dict[str, Service] = {}
        self.workers: dict[str, Service] = {}
        # Every service started, a restarted one's predecessor too (``workers`` and ``controllers``
        # name the latest): close() stops them all, so that none outlives its test.
        self._started: list[Service] = []
        self._clients: list[Client] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports.values()]

    def start_controller(self, name: str) -> Service:
        port = self.ports.setdefault(name, free_port())
        service = Service(
            ["controller", "--listen", f"127.0.0.1:{port}", "--store", self.store],
            self.workdir / f"controller-{name}.log",
            self.env,
        )
        self.controllers[name] = service
        self._started.append(service)
        service.wait_for(re.compile(rf"controller ready: listening on 127.0.0.1:{port}"))
        return service

    def start_worker(self, name: str, capacity: int = 8) -> Service:
        service = Service(
            [
                "worker",
                self.app,
                "--controller",
                ",".join(self.addresses),
                "--worker-id",
                name,
                "--capacity",
                str(capacity),
            ],
            self.workdir / f"worker-{name}.log",
            self.env,
        )
        self.workers[name] = service
        self._started.append(service)
        return service

    def client(self, retry_deadline_s: float = 30.0, timeout_s: float = 3.0) -> Client:
        # A short per-call timeout: a call to a paused controller moves on sooner.
        client = Client(self.addresses, retry_deadline_s=retry_deadline_s, timeout_s=timeout_s)
        self._clients.append(client)
        return client

    def leader(self) -> str | None:
        """The name of the controller that serves now (health SERVING), if any."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        for name, service in self.controllers.items():
            if service.popen.poll() is not None:
                continue
            with grpc.insecure_channel(f"127.0.0.1:{self.ports[name]}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                except grpc.RpcError:
                    continue
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return name
        return None

    def kill(self, service: Service, signum: int = signal.SIGKILL) -> None:
        service.popen.send_signal(signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            service.popen.wait(15)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for service in reversed(self._started):  # the last started first: workers before controllers
            if service.popen.poll() is None:
                service.popen.send_signal(signal.SIGCONT)
            service.stop(timeout_s=10)
