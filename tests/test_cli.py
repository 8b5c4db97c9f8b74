"""End to end: ``shards controller``, ``shards worker`` and the client commands as subprocesses.

The services listen on port 0 and the tests read the bound address from the
controller's ready line; every test uses its own scope, so one controller and
one worker serve the module (per xdist worker).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
from shards_worker import ProcessDefinition, WorkerApp
from shards_worker.loading import AppLoadError, load_app
from tests.support.processes import CLI, READY, REPO, Service, Services, cli_env
from tests.support.waiting import assert_eventually

pytestmark = pytest.mark.e2e

RUN_ID = re.compile(r"^[0-9a-f]+-[0-9a-f]+$")
SHEEP = (
    "count-sheep",
    "breed-sheep",
    "shear-sheep",
    "butcher-sheep",
    "count-sheep-in-field-1",
    "count-sheep-in-field-2",
    "count-sheep-in-field-3",
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    workdir = tmp_path_factory.mktemp("cli")
    running: Services | None = None
    try:
        running = Services(workdir, f"cli-worker-{uuid.uuid4().hex[:6]}")
        yield running
    finally:
        if running is not None:
            running.close()


@pytest.fixture
def scope(services: Services) -> str:
    """A fresh scope, defined from the worker."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    services.api.define_processes(name)
    return name


def shards(
    services: Services | None, *args: str, timeout_s: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``shards ARGS`` against the services' controller."""
    command = [*CLI, *args]
    if services is not None and "SHARDS_CONTROLLER" not in env:
        command += ["--controller", services.address]
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        env=cli_env(**env),
    )


def row(output: str, process_id: str) -> str:
    """The table row of ``process_id`` (``│ id …│``)."""
    pattern = re.compile(rf"│\s*{re.escape(process_id)}[\s⚠*]")
    rows = [line for line in output.splitlines() if pattern.search(line)]
    assert len(rows) == 1, f"expected one row for {process_id!r} in:\n{output}"
    return rows[0]


def row_text(output: str, process_id: str) -> str:
    """The row of ``process_id`` with its wrapped lines put back together, cell by cell."""
    lines = output.splitlines()
    first = lines.index(row(output, process_id))
    block = [lines[first]]
    for line in lines[first + 1 :]:
        cells = line.split("│")
        if len(cells) < 3 or cells[1].strip():
            break  # the next row (or the table's end)
        block.append(line)
    columns = zip(*(line.split("│") for line in block), strict=False)
    return " │ ".join(" ".join(part.strip() for part in column if part.strip()) for column in columns)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def wait_state(services: Services, scope: str, process_id: str, state: ProcessState) -> None:
    assert_eventually(lambda: services.api.get_process(scope, process_id).state is state, timeout_s=20)


# ---------------------------------------------------------------- client commands


def test_launch_follow_of_quick_exits_0_and_ps_shows_done(services: Services, scope: str) -> None:
    launched = shards(services, "launch", scope, "quick", "--follow")
    assert launched.returncode == 0, launched.stderr
    lines = launched.stdout.splitlines()
    assert RUN_ID.match(lines[0]), launched.stdout
    assert "quick done" in launched.stdout

    listed = shards(services, "ps", scope)
    assert listed.returncode == 0, listed.stderr
    assert "done" in row(listed.stdout, "quick")
    assert "idle" in row(listed.stdout, "until-stopped")

    runs = shards(services, "runs", scope, "quick")
    assert runs.returncode == 0, runs.stderr
    assert lines[0] in runs.stdout
    assert "done" in runs.stdout


def test_launch_without_follow_prints_only_the_run_id(services: Services, scope: str) -> None:
    launched = shards(services, "launch", scope, "async-quick")
    assert launched.returncode == 0, launched.stderr
    assert RUN_ID.match(launched.stdout.strip()), launched.stdout
    wait_state(services, scope, "async-quick", ProcessState.DONE)
    assert services.api.get_process(scope, "async-quick").run_id == launched.stdout.strip()


def test_follow_of_failing_exits_1_with_the_error_and_dismiss_clears_it(
    services: Services, scope: str
) -> None:
    followed = shards(services, "launch", scope, "failing", "--follow", "--yes")
    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert "failing failed" in followed.stdout
    assert "RuntimeError: the sheep escaped" in followed.stdout
    no_traceback(followed)

    listed = shards(services, "ps", scope)
    assert "failed" in row(listed.stdout, "failing")
    assert "the sheep escaped" in row_text(listed.stdout, "failing")

    dismissed = shards(services, "dismiss", scope, "failing")
    assert dismissed.returncode == 0, dismissed.stderr
    assert "messages dismissed" in dismissed.stdout
    listed = shards(services, "ps", scope)
    assert "the sheep escaped" not in row(listed.stdout, "failing")


def test_a_process_with_a_warning_needs_yes_when_not_interactive(services: Services, scope: str) -> None:
    refused = shards(services, "launch", scope, "failing")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ")
    assert "It will fail" in refused.stderr and "--yes" in refused.stderr
    no_traceback(refused)
    assert services.api.get_process(scope, "failing").state is ProcessState.IDLE
    assert "⚠" in row(shards(services, "ps", scope).stdout, "failing")

    # In a scope never defined, the launch would define it: the warning still applies.
    fresh = f"cli-{uuid.uuid4().hex[:8]}"
    refused = shards(services, "launch", fresh, "failing")
    assert refused.returncode == 1
    assert "It will fail" in refused.stderr
    assert services.api.get_process(fresh, "failing").state is ProcessState.IDLE


def test_stop_of_until_stopped_shows_stopped(services: Services, scope: str) -> None:
    assert shards(services, "launch", scope, "until-stopped").returncode == 0
    wait_state(services, scope, "until-stopped", ProcessState.RUNNING)

    stopped = shards(services, "stop", scope, "until-stopped")
    assert stopped.returncode == 0, stopped.stderr
    assert re.search(r"until-stopped: (stop_requested|stopping|stopped)", stopped.stdout), stopped.stdout

    wait_state(services, scope, "until-stopped", ProcessState.STOPPED)
    assert "stopped" in row(shards(services, "ps", scope).stdout, "until-stopped")

    again = shards(services, "stop", scope, "until-stopped")
    assert again.returncode == 1
    assert "not active" in again.stderr
    no_traceback(again)


def test_stop_wait_exits_2_once_stopped(services: Services, scope: str) -> None:
    assert shards(services, "launch", scope, "until-stopped").returncode == 0
    wait_state(services, scope, "until-stopped", ProcessState.RUNNING)
    stopped = shards(services, "stop", scope, "until-stopped", "--wait")
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert "until-stopped stopped" in stopped.stdout


def test_follow_of_a_run_that_is_stopped_exits_2(services: Services, scope: str) -> None:
    follow = subprocess.Popen(
        [*CLI, "launch", scope, "until-stopped", "--follow", "--controller", services.address],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=cli_env(),
    )
    try:
        wait_state(services, scope, "until-stopped", ProcessState.RUNNING)
        services.api.stop_process(scope, "until-stopped")
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 2, out + err
    assert "until-stopped stopped" in out


def test_launching_an_active_process_is_a_clear_error(services: Services, scope: str) -> None:
    assert shards(services, "launch", scope, "until-stopped").returncode == 0
    try:
        again = shards(services, "launch", scope, "until-stopped")
        assert again.returncode == 1
        assert again.stdout == ""
        assert again.stderr.startswith("error: ")
        assert "already" in again.stderr and "until-stopped" in again.stderr
        no_traceback(again)
    finally:
        services.api.stop_process(scope, "until-stopped")
    wait_state(services, scope, "until-stopped", ProcessState.STOPPED)


def test_ps_of_a_malformed_scope_id_exits_1_with_the_message(services: Services) -> None:
    result = shards(services, "ps", "bad scope!")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: scope_id 'bad scope!' is malformed")
    no_traceback(result)


def test_unknown_process_is_not_found(services: Services, scope: str) -> None:
    result = shards(services, "launch", scope, "no-such-process")
    assert result.returncode == 1
    assert "no-such-process" in result.stderr and "not defined" in result.stderr
    no_traceback(result)


def test_ps_filters_by_name_and_level(services: Services, scope: str) -> None:
    by_name = shards(services, "ps", scope, "--name", "quick")
    assert by_name.returncode == 0, by_name.stderr
    row(by_name.stdout, "quick")
    row(by_name.stdout, "async-quick")
    assert "until-stopped" not in by_name.stdout

    top = shards(services, "ps", scope, "--level", "1")
    assert "until-stopped" in top.stdout
    assert not re.search(r"│\s*quick\s", top.stdout)

    nothing = shards(services, "ps", scope, "--name", "zebra")
    assert nothing.returncode == 0
    assert "no processes matching the filter" in nothing.stdout


def test_ps_rows_are_sorted_by_detail_level_then_name(services: Services, scope: str) -> None:
    listed = shards(services, "ps", scope).stdout
    order = [m.group(1) for m in re.finditer(r"^│\s*([a-z][a-z0-9-]*)", listed, re.MULTILINE)]
    levels = {d.process_id: d.detail_level for d in _definitions()}
    names = {d.process_id: d.name.casefold() for d in _definitions()}
    assert order == sorted(levels, key=lambda pid: (levels[pid], names[pid], pid))


def _definitions() -> list[ProcessDefinition]:
    from tests.support.apps import DEFINITIONS

    return DEFINITIONS


def test_ps_watch_prints_state_changes_until_interrupted(
    services: Services, scope: str, tmp_path: Path
) -> None:
    out_path = tmp_path / "watch.out"
    with out_path.open("w") as out:
        watch = subprocess.Popen(
            [*CLI, "ps", scope, "--watch", "--controller", services.address],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=cli_env(),
        )
        try:
            assert_eventually(lambda: "until-stopped" in out_path.read_text(), timeout_s=30)
            services.api.launch_process(scope, "quick")
            assert_eventually(lambda: re.search(r"quick\s+done", out_path.read_text()), timeout_s=30)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(15) == 130  # interrupted
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
    assert "Traceback" not in out_path.read_text()


def test_define_and_purge(services: Services) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    defined = shards(services, "define", name)
    assert defined.returncode == 0, defined.stderr
    assert f"{len(_definitions())} processes defined" in defined.stdout
    row(defined.stdout, "quick")

    again = shards(services, "define", name, "--only-if-missing", "--clean")
    assert again.returncode == 0, again.stderr
    row(again.stdout, "quick")

    services.api.launch_process(name, "until-stopped")
    busy = shards(services, "purge", name)
    assert busy.returncode == 1
    assert "active" in busy.stderr and "until-stopped" in busy.stderr
    services.api.stop_process(name, "until-stopped")
    wait_state(services, name, "until-stopped", ProcessState.STOPPED)

    purged = shards(services, "purge", name)
    assert purged.returncode == 0, purged.stderr
    assert f"purged {len(_definitions())} processes from scope {name!r}" in purged.stdout
    # the next view defines the scope again (as the original does): fresh, idle records
    assert "idle" in row(shards(services, "ps", name).stdout, "until-stopped")


def test_workers_lists_the_worker_using_the_environment_default(services: Services) -> None:
    result = shards(services, "workers", SHARDS_CONTROLLER=services.address)
    assert result.returncode == 0, result.stderr
    assert services.worker_id in result.stdout
    assert "yes" in row(result.stdout, services.worker_id)


def test_runs_with_a_limit(services: Services, scope: str) -> None:
    for _ in range(2):
        assert shards(services, "launch", scope, "quick", "--follow").returncode == 0
    assert shards(services, "launch", scope, "async-quick", "--follow").returncode == 0
    every = shards(services, "runs", scope)
    assert every.returncode == 0, every.stderr
    assert len(re.findall(r"│ [0-9a-f]+-[0-9a-f]+ ", every.stdout)) == 3
    one = shards(services, "runs", scope, "quick", "--limit", "1")
    assert len(re.findall(r"│ [0-9a-f]+-[0-9a-f]+ ", one.stdout)) == 1
    assert "async-quick" not in one.stdout


def test_an_unreachable_controller_is_a_short_error() -> None:
    result = shards(None, "ps", "demo", "--controller", "127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "is a controller running at 127.0.0.1:1" in result.stderr
    no_traceback(result)


def test_worker_with_a_bad_app_spec_exits_2() -> None:
    result = shards(None, "worker", "no_such_module_here:app", "--controller", "127.0.0.1:1")
    assert result.returncode == 2  # a start-up error
    assert "no module named 'no_such_module_here'" in result.stderr
    no_traceback(result)


# ---------------------------------------------------------------- services


def test_services_stop_cleanly_on_signals(tmp_path: Path) -> None:
    running = Services(tmp_path, "cli-stopping-worker")
    try:
        running.api.launch_process("stopping", "until-stopped")
        # Running *code* (it reports progress), not only handed to the worker.
        assert_eventually(lambda: running.api.get_process("stopping", "until-stopped").progress.rate > 0)
        assert running.worker is not None
        # A graceful stop: the worker asks its runs to stop and reports them stopped.
        assert running.worker.stop(signal.SIGTERM) == 0
        wait_state(running, "stopping", "until-stopped", ProcessState.STOPPED)
        assert running.controller.stop(signal.SIGINT) == 0
    finally:
        running.close()
    assert "worker stopped" in running.worker.output()
    assert "controller stopped" in running.controller.output()
    assert "Traceback" not in running.worker.output() + running.controller.output()


# ---------------------------------------------------------------- the demo


def test_demo_runs_to_the_end_without_a_terminal() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "examples.demo"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=cli_env(),
        start_new_session=True,  # its own process group: nothing may outlive it
    )
    try:
        out, err = demo.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        out, err = demo.communicate()
        pytest.fail(f"the demo did not finish within 90s:\n{out}\n{err}")
    assert demo.returncode == 0, out + err
    summary = out[out.index("Summary") :]
    for process_id in SHEEP:
        assert re.search(rf"^  {re.escape(process_id)}\s+(done|failed)\s", summary, re.MULTILINE), summary
    assert re.search(r"^  count-sheep\s+done", summary, re.MULTILINE)
    assert re.search(r"^  shear-sheep\s+failed", summary, re.MULTILINE)
    assert re.search(r"^  count-sheep-in-field-3\s+failed", summary, re.MULTILINE)
    assert re.search(r"^  breed-sheep\s+done", summary, re.MULTILINE)
    assert out.rstrip().endswith("controller and worker stopped.")

    def group_gone() -> bool:
        try:
            os.killpg(demo.pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert_eventually(group_gone, timeout_s=10)


# ---------------------------------------------------------------- load_app


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory, holding throwaway modules, and not yet on sys.path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return tmp_path


def _module(directory: Path, body: str) -> str:
    name = f"shards_app_{uuid.uuid4().hex[:10]}"
    header = "from shards_worker import ProcessDefinition, WorkerApp\n\ndef run(context):\n    pass\n\n"
    (directory / f"{name}.py").write_text(header + body)
    return name


def test_load_app_accepts_an_app_a_list_or_a_callable(module_dir: Path) -> None:
    name = _module(
        module_dir,
        "defs = [ProcessDefinition('one', run)]\n"
        "app = WorkerApp.of(defs)\n"
        "def make():\n    return defs\n"
        "class Holder:\n    app = app\n",
    )
    assert isinstance(load_app(f"{name}:app"), WorkerApp)  # found via the current directory
    listed = load_app(f"{name}:defs")
    assert [d.process_id for d in listed.get_process_list(None)] == ["one"]
    assert [d.process_id for d in load_app(f"{name}:make").get_process_list(None)] == ["one"]
    assert isinstance(load_app(f"{name}:Holder.app"), WorkerApp)
    assert isinstance(load_app("tests.support.apps:APP"), WorkerApp)


@pytest.mark.parametrize(
    "spec", ["examples.sheep", "examples.sheep:", ":app", "a:b:c", "not-a-module:app", "m:1x"]
)
def test_load_app_refuses_a_malformed_spec(spec: str) -> None:
    with pytest.raises(AppLoadError, match=r"MODULE:ATTR|not a module name|not an attribute name"):
        load_app(spec)


def test_load_app_names_a_missing_module(module_dir: Path) -> None:
    with pytest.raises(AppLoadError, match="no module named 'no_such_pkg'"):
        load_app("no_such_pkg.sub:app")


def test_load_app_reports_an_import_that_fails_inside_the_module(module_dir: Path) -> None:
    name = _module(module_dir, "import no_such_dependency_xyz\n")
    with pytest.raises(
        AppLoadError, match=f"importing '{name}' failed: No module named 'no_such_dependency_xyz'"
    ):
        load_app(f"{name}:app")
    broken = _module(module_dir, "raise RuntimeError('boom')\n")
    with pytest.raises(AppLoadError, match="raised RuntimeError: boom"):
        load_app(f"{broken}:app")


def test_load_app_names_a_missing_attribute_and_suggests_apps(module_dir: Path) -> None:
    name = _module(module_dir, "app = WorkerApp.of([ProcessDefinition('one', run)])\n")
    with pytest.raises(
        AppLoadError, match=rf"module '{name}' has no attribute 'ap' \(worker apps there: app\)"
    ):
        load_app(f"{name}:ap")


def test_load_app_refuses_the_wrong_type(module_dir: Path) -> None:
    name = _module(
        module_dir,
        "number = 42\n"
        "mixed = [ProcessDefinition('one', run), 'two']\n"
        "empty = []\n"
        "def gives_text():\n    return 'text'\n"
        "def needs_args(x):\n    return x\n",
    )
    with pytest.raises(AppLoadError, match=f"{name}:number is an int; expected a WorkerApp"):
        load_app(f"{name}:number")
    with pytest.raises(AppLoadError, match="item 1 of the list is a str, not a ProcessDefinition"):
        load_app(f"{name}:mixed")
    with pytest.raises(AppLoadError, match="empty list"):
        load_app(f"{name}:empty")
    with pytest.raises(AppLoadError, match=r"gives_text\(\) returned a str"):
        load_app(f"{name}:gives_text")
    with pytest.raises(AppLoadError, match=r"calling .*needs_args failed: TypeError"):
        load_app(f"{name}:needs_args")


# ---------------------------------------------------------------- with authentication


def test_the_cli_and_the_services_authenticate_from_the_environment(tmp_path: Path) -> None:
    import hashlib

    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
[clients.alice]
token_sha256 = "{digest("alice-token")}"
grants = [{{ scopes = ["farm"], actions = ["admin"] }}]

[workers.cli-auth-worker]
token_sha256 = "{digest("worker-token")}"
"""
    )
    controller = Service(
        ["controller", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "shards.db")],
        tmp_path / "controller.log",
        {"SHARDS_AUTH_POLICY": str(policy)},
    )
    worker: Service | None = None
    try:
        address = controller.wait_for(READY).group(1)
        worker = Service(
            ["worker", "tests.support.apps:APP", "--controller", address, "--worker-id", "cli-auth-worker"],
            tmp_path / "worker.log",
            {"SHARDS_WORKER_TOKEN": "worker-token"},
        )
        authenticated = cli_env(SHARDS_TOKEN="alice-token")

        def launched() -> subprocess.CompletedProcess[str]:
            result = subprocess.run(
                [*CLI, "launch", "farm", "quick", "--follow", "--controller", address],
                capture_output=True,
                text=True,
                env=authenticated,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr  # the worker may still be registering
            return result

        assert_eventually(launched, timeout_s=30, interval_s=0.2)
        anonymous = subprocess.run(
            [*CLI, "ps", "farm", "--controller", address],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
        )
        assert anonymous.returncode == 1 and "token" in anonymous.stderr.lower()
        other_scope = subprocess.run(
            [*CLI, "ps", "barn", "--controller", address],
            capture_output=True,
            text=True,
            env=authenticated,
            timeout=60,
        )
        assert other_scope.returncode == 1 and "barn" in other_scope.stderr
    finally:
        if worker is not None:
            worker.stop()
        controller.stop()
    assert worker is not None
    assert "worker-token" not in controller.output() + worker.output()  # secrets are never logged


def test_logs_prints_a_runs_whole_log_by_run_id_or_for_a_process_last_run(
    services: Services, scope: str
) -> None:
    launched = shards(services, "launch", scope, "failing", "--yes")
    run_id = launched.stdout.strip()
    assert RUN_ID.match(run_id), launched.stdout + launched.stderr
    services.api.wait_run(run_id, 20)
    by_id = shards(services, "logs", run_id)
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.startswith("Traceback (most recent call last):")
    assert "RuntimeError: the sheep escaped" in by_id.stdout
    last = shards(services, "logs", scope, "failing")
    assert (last.returncode, last.stdout) == (0, by_id.stdout)
    followed = shards(services, "logs", run_id, "--follow")  # an ended run: its lines, then the end
    assert followed.returncode == 0 and followed.stdout == by_id.stdout
    assert f"run {run_id} ended failed" in followed.stderr
    # The traceback is one entry of the log (lines within it included).
    assert services.api.get_run_log(run_id).end_offset == 1
    assert shards(services, "logs", run_id, "--tail", "1").stdout == by_id.stdout
    assert shards(services, "logs", run_id, "--tail", "0").stdout == ""


def test_logs_of_an_unknown_run_or_a_process_that_never_ran_is_a_clear_error(
    services: Services, scope: str
) -> None:
    unknown = shards(services, "logs", "r-unknown")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: run 'r-unknown' does not exist"
    never = shards(services, "logs", scope, "quick")
    assert never.returncode == 1
    assert never.stderr.strip() == f"error: {scope}/quick has never run: no log to show"
    bad = shards(services, "logs", "r-unknown", "--offset", "-3")
    assert bad.returncode == 1 and "--offset must be 0 or more, got -3" in bad.stderr
    no_traceback(bad)
