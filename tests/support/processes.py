"""Services as subprocesses: ``shards controller`` and ``shards worker`` for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
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

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w")
        self.popen = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=cli_env(),
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
