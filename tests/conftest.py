"""Shared fixtures. Server fixtures start real servers on port 0 in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.apps import GATES
from tests.support.cluster import Cluster, embedded_uri
from tests.support.isolated_apps import RUN_CONTROL_APP

pytest_plugins = ["tests.support.mongo", "tests.support.mongo_stores"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A controller on the embedded store and one worker (capacity 4)."""
    running = Cluster(embedded_uri(tmp_path))
    try:
        running.start_controller()
        running.start_worker()
        yield running
    finally:
        running.close()
        GATES.clear()


@pytest.fixture
def rc(tmp_path: Path) -> Iterator[Cluster]:
    """Run control: a controller on the embedded store and a worker of ``RUN_CONTROL_APP``,
    scope ``farm`` defined (the isolation, timeout and retry tests)."""
    running = Cluster(embedded_uri(tmp_path))
    try:
        running.start_controller()
        running.start_worker(RUN_CONTROL_APP)
        running.client.define_processes("farm")
        yield running
    finally:
        running.close()
