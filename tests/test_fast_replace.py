"""``fast_replace.replace`` does what ``dataclasses.replace`` does (a pure unit test)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from shards.models import ProcessRecord, Progress, Run
from shards.states import ProcessState
from shards_controller.fast_replace import replace


def test_it_copies_every_field_but_the_changed_ones() -> None:
    record = ProcessRecord(
        scope_id="s1", process_id="p1", name="P", progress=Progress("half", 0.5), revision=4
    )
    changed = replace(record, state=ProcessState.RUNNING, revision=5)
    assert changed == dataclasses.replace(record, state=ProcessState.RUNNING, revision=5)
    assert record.revision == 4 and record.state is ProcessState.IDLE  # the original is untouched
    run = Run(run_id="r1", scope_id="s1", process_id="p1", created_at=datetime.now(UTC))
    assert replace(run, attempt=2) == dataclasses.replace(run, attempt=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.revision = 6  # type: ignore[misc]


def test_an_unknown_field_is_refused_as_replace_refuses_it() -> None:
    with pytest.raises(TypeError):
        replace(ProcessRecord(scope_id="s1", process_id="p1"), no_such_field=1)


def test_a_class_with_post_init_goes_to_dataclasses_replace() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")

    with pytest.raises(ValueError, match="negative"):
        replace(Checked(1), value=-1)
