"""The seeds' sheep, as a worker app: ``shards worker examples.sheep:app``.

Every scope is a farm. The farm decides how many fields there are; each
field gets its own counting process, which ``breed-sheep`` runs as children.
The last field has a wolf in it: counting it fails, and ``breed-sheep``
survives that (``survive_failure=True``). ``shear-sheep`` fails outright, and
``butcher-sheep`` carries a warning, so a UI asks before launching it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shards_worker import ProcessContext, ProcessDefinition, ProcessState, WorkerApp

STEP_S = 0.25


@dataclass(frozen=True)
class Farm:
    """The scope data: a farm and the sheep in each of its fields."""

    name: str
    sheep_per_field: tuple[int, ...] = (5, 7, 3)
    wolf_in_field: int = 3


def count_sheep(context: ProcessContext) -> None:
    """The seeds' first example: count until asleep (or until stopped)."""
    total = 16
    for n in range(1, total + 1):
        if not context.should_continue():
            return
        time.sleep(STEP_S)
        context.report_progress(f"{n} sheep" + (", zzz..." if n == total else ""), n / total)


def _count_in_field(field: int, sheep: int, wolf: bool) -> Callable[[ProcessContext], None]:
    def count(context: ProcessContext) -> None:
        for n in range(1, sheep + 1):
            context.check_stop()
            time.sleep(STEP_S)
            if wolf and n == 2:
                raise RuntimeError(f"a wolf is among the sheep in field {field}")
            context.report_progress(f"{n} of {sheep} sheep in field {field}", n / sheep)

    return count


def breed_sheep(context: ProcessContext) -> None:
    """Runs a child process per field; a wolf in the last field does not stop the breeding."""
    farm: Farm = context.scope_data
    fields = len(farm.sheep_per_field)
    context.report_progress("Looking for a ram and a ewe", 0.05)
    time.sleep(STEP_S * 2)
    lost = []
    for field in range(1, fields + 1):
        context.report_progress(f"Counting the flock in field {field}", field / (fields + 1))
        state = context.run_process(f"count-sheep-in-field-{field}", survive_failure=True)
        if state is not ProcessState.DONE:
            lost.append(f"field {field} {state}")
    note = f" ({', '.join(lost)})" if lost else ""
    context.report_progress(f"Two lambs born{note}", 1.0)


def butcher_sheep(context: ProcessContext) -> None:
    steps = ["Sharpening the knives", "Catching a sheep", "Apologising to it", "Lamb chops ready"]
    for n, message in enumerate(steps, start=1):
        context.check_stop()
        time.sleep(STEP_S * 3)
        context.report_progress(message, n / len(steps))


def shear_sheep(context: ProcessContext) -> None:
    for n in range(1, 5):
        context.check_stop()
        time.sleep(STEP_S * 2)
        context.report_progress(f"Sheared {n} of 8 sheep", n / 8)
    raise RuntimeError("the sheep bolted with half its fleece")


def farm_of(scope_id: str) -> Farm:
    return Farm(name=scope_id)


def processes(farm: Farm) -> list[ProcessDefinition]:
    fields = [
        ProcessDefinition(
            f"count-sheep-in-field-{field}",
            _count_in_field(field, sheep, wolf=field == farm.wolf_in_field),
            name=f"Count sheep in field {field}",
            detail_level=3 if field == farm.wolf_in_field else 2,
        )
        for field, sheep in enumerate(farm.sheep_per_field, start=1)
    ]
    return [
        ProcessDefinition("count-sheep", count_sheep, name="Count sheep", detail_level=1),
        ProcessDefinition("breed-sheep", breed_sheep, name="Breed sheep", detail_level=1),
        ProcessDefinition(
            "butcher-sheep",
            butcher_sheep,
            name="Butcher sheep",
            detail_level=2,
            warning="No sheep survives this.",
        ),
        ProcessDefinition("shear-sheep", shear_sheep, name="Shear sheep", detail_level=2),
        *fields,
    ]


# The processes a user launches; the field counts are launched by breed-sheep.
TOP_LEVEL = ("count-sheep", "breed-sheep", "shear-sheep", "butcher-sheep")

app = WorkerApp(get_process_list=processes, get_scope_data=farm_of)
