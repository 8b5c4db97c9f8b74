"""End to end: the CLI under auth and under trouble (issue 10, items 9 and 10), as subprocesses."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import Client, ProcessState
from tests.support.processes import CLI, READY, Service, cli_env
from tests.support.waiting import assert_eventually

pytestmark = pytest.mark.e2e

POLICY = """
[clients.alice]
token = "alice-token-0123456789"
grants = [{ scopes = ["tenant-*"], actions = ["admin"] }]

[clients.bob]
token = "bob-token-0123456789"
grants = [{ scopes = ["tenant-b"], actions = ["list"] }]

[workers.tenants]
token = "worker-token-0123456789"
scopes = ["tenant-*"]
"""


def run_cli(*args: str, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=cli_env(**env),
    )


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[str]:
    """A controller with a policy; its address."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    controller = Service(
        ["controller", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "shards.db")],
        tmp_path / "controller.log",
        {"SHARDS_AUTH_POLICY": str(policy)},
    )
    try:
        yield controller.wait_for(READY).group(1)
    finally:
        controller.stop()


def test_a_worker_started_with_scopes_serves_a_tenant_pattern_and_workers_says_what_is_hidden(
    secured: str, tmp_path: Path
) -> None:
    args = ["worker", "tests.support.apps:APP", "--controller", secured, "--worker-id", "tenants"]
    worker = Service(
        [*args, "--scopes", "tenant-*"],
        tmp_path / "worker.log",
        {"SHARDS_WORKER_TOKEN": "worker-token-0123456789"},
    )
    try:

        def listed_to_alice() -> str:
            result = run_cli("workers", "--controller", secured, SHARDS_TOKEN="alice-token-0123456789")
            assert result.returncode == 0 and "tenants" in result.stdout, (result, worker.output())
            return result.stdout

        assert_eventually(listed_to_alice, timeout_s=30, interval_s=0.2)
        launched = run_cli(
            "launch", "tenant-a", "quick", "--follow", "--controller", secured,
            SHARDS_TOKEN="alice-token-0123456789",
        )  # fmt: skip
        assert launched.returncode == 0, launched.stderr
        hidden = run_cli("workers", "--controller", secured, SHARDS_TOKEN="bob-token-0123456789")
        assert hidden.returncode == 0, hidden.stderr
        assert "no workers registered" not in hidden.stdout
        assert "no workers visible to bob" in hidden.stdout, hidden.stdout
    finally:
        worker.stop()


def test_worker_scopes_refuses_a_malformed_pattern_in_one_line(secured: str) -> None:
    result = run_cli("worker", "tests.support.apps:APP", "--controller", secured, "--scopes", "bad pattern")
    _one_error_line(result, "error: --scopes: scope pattern 'bad pattern' is malformed")


# ---------------------------------------------------------------- start-up errors


def _one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("open to the network without auth", "refusing to listen on 0.0.0.0:0 without authentication"),
        ("port in use", "cannot listen on 127.0.0.1:"),
        ("store file not a database", "the store is not a usable SQLite database"),
        ("missing policy", "No such file or directory: "),
        ("worker timeout not a number", "SHARDS_WORKER_TIMEOUT_S='abc' is not a valid number"),
    ],
)
def test_a_controller_that_cannot_start_says_why_in_one_line_and_exits_2(
    tmp_path: Path, case: str, expected: str
) -> None:
    import socket

    listen, store, env = "127.0.0.1:0", str(tmp_path / "shards.db"), {}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if case == "open to the network without auth":
            listen = "0.0.0.0:0"
        elif case == "port in use":
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        elif case == "store file not a database":
            Path(store).write_text("not a database, but text\n" * 100)
        elif case == "missing policy":
            env["SHARDS_AUTH_POLICY"] = str(tmp_path / "no-such-policy.toml")
        else:
            env["SHARDS_WORKER_TIMEOUT_S"] = "abc"
        result = run_cli("controller", "--listen", listen, "--store", store, timeout_s=30, **env)
    _one_error_line(result, expected)


# ---------------------------------------------------------------- client commands under trouble


def test_options_before_the_subcommand_are_taken() -> None:
    result = run_cli("--controller", "127.0.0.1:1", "--timeout", "1", "ps", "demo")
    assert result.returncode == 1, result.stderr
    assert "is a controller running at 127.0.0.1:1" in result.stderr


def test_ps_watch_against_a_down_controller_gives_up_after_the_timeout() -> None:
    started = time.monotonic()
    result = run_cli("ps", "demo", "--watch", "--controller", "127.0.0.1:1", "--timeout", "2", timeout_s=40)
    assert result.returncode == 1, result
    assert "no snapshot of scope 'demo' within 2 s" in result.stderr
    assert time.monotonic() - started < 30


def test_stop_wait_gives_up_after_the_timeout(tmp_path: Path) -> None:
    controller = Service(
        ["controller", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "shards.db")],
        tmp_path / "controller.log",
    )
    worker: Service | None = None
    try:
        address = controller.wait_for(READY).group(1)
        worker = Service(
            ["worker", "tests.support.apps:FAULT_APP", "--controller", address, "--grace", "0.5"],
            tmp_path / "worker.log",
        )
        api = Client(address)
        try:
            assert_eventually(lambda: api.list_workers(), timeout_s=30)
            run_id = api.launch_process("farm", "stubborn").run_id
            assert_eventually(lambda: api.get_run(run_id).state is ProcessState.RUNNING)
        finally:
            api.close()
        started = time.monotonic()
        stopped = run_cli("stop", "farm", "stubborn", "--wait", "--timeout", "3", "--controller", address)
        waited = time.monotonic() - started
        assert stopped.returncode == 1, stopped
        assert "stubborn had not ended 3 s after the stop was asked" in stopped.stderr
        assert 3 <= waited < 20, waited  # not the run's 60 s
    finally:
        if worker is not None:
            worker.stop()
        controller.stop()
