"""End to end: the CLI side of issue 12 (reset, get, ps filters and times, what define says)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from shards import ProcessState
from shards_worker import WorkerApp
from tests.support.apps import DEFINITIONS
from tests.support.cluster import Cluster, embedded_uri
from tests.support.processes import Services
from tests.test_cli import no_traceback, row, row_text, services, shards, wait_state

pytestmark = pytest.mark.e2e
S = ProcessState
__all__ = ["services"]  # the module's fixture, shared with test_cli
CLOCK = r"\d\d:\d\d:\d\d"


@pytest.fixture
def fresh(services: Services) -> str:
    """A scope nobody has defined yet."""
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_ps_of_a_fresh_scope_defines_it_and_get_shows_every_field(services: Services, fresh: str) -> None:
    listed = shards(services, "ps", fresh)  # no define first: the first view defines it
    assert listed.returncode == 0, listed.stderr
    assert "idle" in row(listed.stdout, "quick")
    run = services.api.launch_process(fresh, "failing")
    services.api.wait_run(run.run_id, 10)
    shown = shards(services, "get", fresh, "failing")
    assert shown.returncode == 0, shown.stderr
    for field in (
        "name",
        "detail level",
        "warning",
        "state",
        "progress",
        "error",
        "failed at",
        "run",
        "worker",
    ):
        assert re.search(rf"│ {field}\s+│", shown.stdout), (field, shown.stdout)
    assert "RuntimeError: the sheep escaped" in shown.stdout and run.run_id in shown.stdout
    missing = shards(services, "get", fresh, "no-such-process")
    assert missing.returncode == 1 and "not defined" in missing.stderr
    no_traceback(missing)


def test_ps_shows_the_time_of_day_an_ended_run_ended(services: Services, fresh: str) -> None:
    services.api.wait_run(services.api.launch_process(fresh, "quick").run_id, 10)
    services.api.wait_run(services.api.launch_process(fresh, "failing").run_id, 10)
    services.api.launch_process(fresh, "until-stopped")
    services.api.stop_process(fresh, "until-stopped")
    wait_state(services, fresh, "until-stopped", S.STOPPED)
    listed = shards(services, "ps", fresh).stdout
    assert re.search(rf"Finished at {CLOCK}, in \d+:\d\d", row_text(listed, "quick")), listed
    assert re.search(rf"Stopped at {CLOCK}", row_text(listed, "until-stopped")), listed
    assert re.search(rf"the sheep escaped at {CLOCK} │ after \d+:\d\d", row_text(listed, "failing")), listed


def test_ps_filters_search_hide_special_and_active(services: Services, fresh: str) -> None:
    services.api.define_processes(fresh)
    searched = shards(services, "ps", fresh, "--search", "^(quick|ASYNC-quick)$").stdout
    assert "quick" in row(searched, "quick") and "async-quick" in row(searched, "async-quick")
    assert "failing" not in searched
    special = [d.process_id for d in DEFINITIONS if d.special]
    assert special[0] in shards(services, "ps", fresh).stdout
    assert special[0] not in shards(services, "ps", fresh, "--hide-special").stdout
    nothing = shards(services, "ps", fresh, "--active")
    assert "no processes matching the filter" in nothing.stdout
    services.api.launch_process(fresh, "gated")  # detail level 3
    active = shards(services, "ps", fresh, "--active", "--level", "1").stdout
    assert "running" in row(active, "gated") or "scheduled" in row(active, "gated")
    assert "quick" not in active
    services.api.stop_process(fresh, "gated")
    bad = shards(services, "ps", fresh, "--search", "(unclosed")
    assert bad.returncode == 1 and "missing )" in bad.stderr
    no_traceback(bad)


def test_define_says_what_changed_and_reset_starts_over(services: Services, fresh: str) -> None:
    defined = shards(services, "define", fresh)
    assert defined.returncode == 0, defined.stderr
    assert "added " in defined.stdout and "quick" in defined.stdout
    assert "nothing changed" in shards(services, "define", fresh).stdout
    services.api.wait_run(services.api.launch_process(fresh, "failing").run_id, 10)
    reset = shards(services, "reset", fresh)
    assert reset.returncode == 0, reset.stderr
    assert f"wiped {len(DEFINITIONS)} records" in reset.stdout
    assert "idle" in row(reset.stdout, "failing") and "the sheep escaped" not in reset.stdout
    services.api.launch_process(fresh, "until-stopped")
    refused = shards(services, "reset", fresh)
    assert refused.returncode == 1 and "until-stopped" in refused.stderr and "active" in refused.stderr
    no_traceback(refused)
    services.api.stop_process(fresh, "until-stopped")


def test_ps_of_a_scope_no_worker_serves_says_so(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        cluster.start_worker(WorkerApp.of(DEFINITIONS, scopes=("farm-*",)))
        address = cluster.address
        empty = shards(None, "ps", "elsewhere", SHARDS_CONTROLLER=address)
        assert empty.returncode == 0, empty.stderr
        assert "no live worker serves it" in empty.stdout
        assert "idle" in row(shards(None, "ps", "farm-1", SHARDS_CONTROLLER=address).stdout, "quick")
    finally:
        cluster.close()
