"""The controller's process tunes its garbage collector at start-up (``shards_controller.collector``):
``shards controller`` and ``run_controller`` call ``tune``; an in-process ``ControllerServer`` (the
tests' clusters) leaves its host process alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shards_controller import collector


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored")
def test_tune_raises_the_young_threshold_and_freezes_what_start_up_made() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # CPython's default
    collector.tune()
    assert gc.get_threshold() == collector.THRESHOLDS
    assert gc.get_freeze_count() > 10_000  # the modules, classes and functions loaded so far
