"""A private PostgreSQL server for FerretDB's PostgreSQL backend (tests, benchmarks, ``make run-ha``).

Debian's PostgreSQL (``scripts/install-postgresql.sh`` installs it when
missing): ``initdb`` in a new temporary directory, then ``pg_ctl start`` on a
free loopback port, trust authentication on loopback only, no Unix socket
outside the data directory. PostgreSQL refuses to run as root, so when we are
root the server runs as the ``postgres`` user (``runuser``) and the directory is
made its own. ``scripts/ferretdb-postgresql.sql`` is applied to the new
database (the GIN index on ``_id`` that FerretDB 1.24 needs to serve ``_id``
filters from an index; see that file).

``durable=False`` (tests): ``fsync=off``. Either way ``synchronous_commit=off``:
a commit returns before its WAL is flushed, so a crash of the machine (not of
PostgreSQL or FerretDB alone) can lose the last few milliseconds of commits,
which is what the benchmark's Redis (no persistence at all) is compared with.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SETUP_SQL = REPO / "scripts" / "ferretdb-postgresql.sql"
DATABASE = "ferretdb"
START_TIMEOUT_S = 30.0


def find_postgresql_bin() -> tuple[str | None, str]:
    """The directory of ``initdb``/``pg_ctl``/``psql``, or None and why not."""
    explicit = os.environ.get("POSTGRESQL_BIN")
    if explicit:
        if os.access(os.path.join(explicit, "initdb"), os.X_OK):
            return explicit, ""
        return None, f"POSTGRESQL_BIN={explicit} has no initdb"
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True
    )
    if versions:
        return str(Path(versions[0]).parent), ""
    on_path = shutil.which("initdb")
    if on_path:
        return str(Path(on_path).resolve().parent), ""
    return None, "no PostgreSQL (initdb): run scripts/install-postgresql.sh (apt-get install postgresql)"


class PostgreSQL:
    """One PostgreSQL server in a temporary directory of its own, on 127.0.0.1."""

    def __init__(self, bin_dir: str, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.port = 0
        self.directory: Path | None = None
        self._as_user: list[str] = []

    @property
    def url(self) -> str:
        """The URL FerretDB connects with (``--postgresql-url``)."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd="/",
        )

    def start(self) -> str:
        """Create, start and set up the server; '' or why it did not start."""
        self.directory = Path(tempfile.mkdtemp(prefix="shards-pg-"))
        if os.geteuid() == 0:
            try:
                shutil.chown(self.directory, "postgres", "postgres")
            except (LookupError, OSError) as error:
                return f"cannot hand {self.directory} to the postgres user: {error}"
            self._as_user = ["runuser", "-u", "postgres", "--"]
        data = self.directory / "data"
        bin_dir = Path(self.bin_dir)
        init = self._run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if init.returncode != 0:
            return f"initdb failed: {(init.stderr or init.stdout).strip()[-1500:]}"
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.directory),
            "synchronous_commit": "off",
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "plan_cache_mode": "force_custom_plan",  # see scripts/ferretdb-postgresql.sql
            "max_connections": "200",
        }
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())
        why = ""
        for _ in range(3):  # a free port can be taken before the server binds it
            self.port = free_port()
            started = self._run(
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.directory / "postgresql.log"),
                "-o",
                f"-p {self.port}",
                "-w",
                "-t",
                str(int(START_TIMEOUT_S)),
                "start",
            )
            if started.returncode == 0:
                return self._set_up()
            why = f"pg_ctl start failed: {self.log_tail()}"
        return why

    def _set_up(self) -> str:
        psql = [str(Path(self.bin_dir) / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        psql += ["-v", "ON_ERROR_STOP=1", "-q"]
        created = self._run(*psql, "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE}")
        if created.returncode != 0:
            return f"CREATE DATABASE failed: {created.stderr.strip()}"
        setup = subprocess.run(
            [*self._as_user, *psql, "-d", DATABASE, "-f", "-"],
            input=SETUP_SQL.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        if setup.returncode != 0:
            return f"{SETUP_SQL.name} failed: {setup.stderr.strip()}"
        return ""

    def log_tail(self, limit: int = 1500) -> str:
        if self.directory is None:
            return ""
        try:
            return (self.directory / "postgresql.log").read_text(errors="replace").strip()[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        directory, self.directory = self.directory, None
        if directory is None:
            return
        data = directory / "data"
        if (data / "postmaster.pid").exists():
            self._run(str(Path(self.bin_dir) / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)
