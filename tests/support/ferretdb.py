"""FerretDB, the MongoDB-compatible server of the tests, the benchmarks and ``make run-ha``.

``start_ferretdb(handler, workdir)`` starts one on a free loopback port:

- ``postgresql`` (the default, FerretDB's production backend): a private
  PostgreSQL first (``tests.support.postgres``), then FerretDB with
  ``--handler=postgresql --postgresql-url=...``;
- ``sqlite``: FerretDB with ``--handler=sqlite`` and its files in ``workdir``.

``FERRETDB_HANDLER`` picks the default. The binary is ``FERRETDB_BIN``, else
the one ``scripts/install-ferretdb.sh`` caches, else ``ferretdb`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.ports import free_port
from tests.support.postgres import PostgreSQL, find_postgresql_bin

FERRETDB_VERSION = "v1.24.2"
HANDLERS = ("postgresql", "sqlite")
START_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.05
_START_ATTEMPTS = 3  # a free port can be taken by another process before FerretDB binds it

__all__ = ["HANDLERS", "FerretDB", "default_handler", "find_ferretdb", "free_port", "ping", "start_ferretdb"]


def default_handler() -> str:
    """``FERRETDB_HANDLER``, else ``postgresql``."""
    handler = os.environ.get("FERRETDB_HANDLER", "").strip().lower() or "postgresql"
    if handler not in HANDLERS:
        raise ValueError(f"FERRETDB_HANDLER={handler!r}: use one of {', '.join(HANDLERS)}")
    return handler


def ferretdb_cache_path() -> Path:
    """Where ``scripts/install-ferretdb.sh`` leaves the binary."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "shards" / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"


def find_ferretdb() -> tuple[str | None, str]:
    """The FerretDB binary, or None and why not."""
    explicit = os.environ.get("FERRETDB_BIN")
    if explicit:
        # An explicit choice is never silently replaced by another binary.
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit, ""
        return None, f"FERRETDB_BIN={explicit} is not an executable file"
    cached = ferretdb_cache_path()
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached), ""
    on_path = shutil.which("ferretdb")
    if on_path:
        return on_path, ""
    return None, "no ferretdb binary: run scripts/install-ferretdb.sh, or set FERRETDB_BIN or MONGODB_URI"


def ping(uri: str, timeout_s: float) -> str:
    """'' when the server at ``uri`` answers a ping within ``timeout_s``, else the last error."""
    deadline = time.monotonic() + timeout_s
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout_s * 1000), connectTimeoutMS=1000
    )
    with client:
        while True:
            try:
                client.admin.command("ping")
                return ""
            except PyMongoError as error:
                if time.monotonic() >= deadline:
                    return f"{type(error).__name__}: {error}"
            time.sleep(POLL_INTERVAL_S)


class FerretDB:
    """One FerretDB process; on the PostgreSQL backend, with the PostgreSQL it started."""

    def __init__(self, binary: str, data_dir: Path, handler: str = "sqlite") -> None:
        if handler not in HANDLERS:
            raise ValueError(f"unknown FerretDB handler {handler!r}")
        self.binary = binary
        self.data_dir = data_dir
        self.handler = handler
        self.uri = ""
        self.postgresql: PostgreSQL | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, *, durable: bool = False) -> str:
        """Start (PostgreSQL first, when needed) and wait until it answers; '' or why not."""
        if self.handler == "postgresql":
            bin_dir, why = find_postgresql_bin()
            if bin_dir is None:
                return why
            self.postgresql = PostgreSQL(bin_dir, durable=durable)
            why = self.postgresql.start()
            if why:
                self.stop()
                return f"PostgreSQL did not start: {why}"
        why = ""
        for attempt in range(_START_ATTEMPTS):
            why = self._try_start(attempt)
            if not why:
                return ""
            self._stop_ferretdb()
        self.stop()
        return why

    def _backend_flags(self) -> list[str]:
        if self.postgresql is not None:
            return ["--handler=postgresql", f"--postgresql-url={self.postgresql.url}"]
        return ["--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/"]

    def _debug_addr(self) -> str:
        """``-`` (none), unless ``FERRETDB_DEBUG=1``: then a free loopback port, written to the
        data directory's ``debug-addr``, for a goroutine dump of a server that stops answering
        (``curl http://ADDR/debug/pprof/goroutine?debug=2``)."""
        if os.environ.get("FERRETDB_DEBUG") != "1":
            return "-"
        address = f"127.0.0.1:{free_port()}"
        (self.data_dir / "debug-addr").write_text(address)
        return address

    def _try_start(self, attempt: int) -> str:
        port = free_port()
        log_path = self.data_dir / f"ferretdb-{attempt}.log"
        command = [
            self.binary,
            *self._backend_flags(),
            f"--listen-addr=127.0.0.1:{port}",
            "--telemetry=disable",  # it would otherwise try to reach the internet
            # No debug (metrics/pprof) listener at all: "-" disables it, one port
            # fewer to collide on when every xdist worker runs its own server.
            f"--debug-addr={self._debug_addr()}",
            f"--state-dir={self.data_dir}",  # not the current directory
            "--log-level=error",
        ]
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir
            )
        self.uri = f"mongodb://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                output = log_path.read_text(errors="replace").strip()[-2000:]
                return f"ferretdb exited with {self._process.returncode}: {output}"
            error = ping(self.uri, timeout_s=0.5)
            if not error:
                return ""
            if time.monotonic() >= deadline:
                return f"ferretdb did not answer within {START_TIMEOUT_S:.0f}s: {error}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _stop_ferretdb(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        self._stop_ferretdb()
        postgresql, self.postgresql = self.postgresql, None
        if postgresql is not None:
            postgresql.stop()


def start_ferretdb(
    workdir: Path, handler: str | None = None, *, durable: bool = False
) -> tuple[FerretDB, str]:
    """Start a FerretDB on ``handler`` (default: ``default_handler()``) with its files in ``workdir``.

    Returns the server (``.uri``; stop it with ``.stop()``) and '' or why it did not start.
    """
    binary, why = find_ferretdb()
    server = FerretDB(binary or "", workdir, handler or default_handler())
    if binary is None:
        return server, why
    return server, server.start(durable=durable)
