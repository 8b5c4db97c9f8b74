"""Worker apps whose own callbacks misbehave in ordinary ways (issue 10, items 3 and 4)."""

from __future__ import annotations

import time
from typing import Any

from shards import FailedPrecondition
from shards_worker import ProcessContext, ProcessDefinition, WorkerApp
from tests.support.apps import DEFINITIONS


def _no_such_tenant(scope_id: str) -> Any:
    if scope_id.startswith("tenant-"):
        raise LookupError(f"no tenant {scope_id!r} in the app's database")
    return None


#: ``get_scope_data`` raises for scopes ``tenant-*`` (as an app whose database lookup fails).
NO_TENANT_APP = WorkerApp(get_process_list=lambda data: DEFINITIONS, get_scope_data=_no_such_tenant)


def _with_a_bad_id(scope_data: Any) -> list[ProcessDefinition]:
    return [*DEFINITIONS, ProcessDefinition("not a valid id!", lambda context: None)]


#: ``get_process_list`` builds a definition whose id is malformed (it raises there).
BAD_ID_APP = WorkerApp(get_process_list=_with_a_bad_id)


def _slowly(scope_data: Any) -> list[ProcessDefinition]:
    time.sleep(1.5)
    return DEFINITIONS


#: ``get_process_list`` takes 1.5 s (longer than the tests' dispatch timeout).
SLOW_LIST_APP = WorkerApp(get_process_list=_slowly)


def refused_child(context: ProcessContext) -> None:
    """Launches ``gated`` (already running): catches the controller's refusal as the project's error."""
    try:
        context.run_process("gated")
    except FailedPrecondition as refused:
        context.report_progress(f"refused: {type(refused).__name__}", 1.0)
        return
    context.report_progress("not refused", 1.0)


CHILD_APP = WorkerApp.of(
    [*DEFINITIONS, ProcessDefinition("refused-child", refused_child, name="Refused child")]
)
