"""What a worker app declares: process definitions and how to find them per scope.

Mirrors the seeds' ``ProcessDefinition`` and ``initProcessManagerWorker``::

    count_sheep = ProcessDefinition(
        process_id="count-sheep", name="Count sheep", detail_level=1, execute=count,
    )
    app = WorkerApp(get_process_list=lambda scope_data: [count_sheep])
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shards.cron import check_schedule
from shards.errors import InvalidArgument
from shards.models import ProcessInfo, RetryPolicy
from shards.validation import check_detail_level, check_id, check_retry

if TYPE_CHECKING:
    from shards_worker.context import AsyncProcessContext, ProcessContext

Execute = Callable[["ProcessContext"], Any] | Callable[["AsyncProcessContext"], Awaitable[Any]]


ISOLATIONS = ("thread", "process")


@dataclass(frozen=True, slots=True)
class ProcessDefinition:
    """A named piece of background work.

    ``execute`` is a plain function (run in a thread, gets a ``ProcessContext``)
    or an ``async def`` (run on the worker's event loop, gets an
    ``AsyncProcessContext``). ``process_id`` is unique within a scope and may
    embed the id of the object it works on. A non-empty ``warning`` tells a UI
    to ask for confirmation before launching.

    ``isolation="process"`` runs the code in an OS process of its own
    (``shards_worker.isolation``): a stop it ignores is enforced, SIGTERM
    ``stop_grace_s`` after the stop and SIGKILL ``kill_grace_s`` later, and a
    crash of the code fails the run, not the worker. The code must then be a
    module-level function (it is pickled by reference) and the scope data
    must pickle. In a thread (the default) a stop is only ever a request: a
    run still going ``stop_grace_s`` after it is shown as overdue.

    ``timeout_s``: a run still going that long after its start is stopped by
    the controller and ends ``failed`` ("timed out after N s"); a launch may
    give its own. ``retry`` (a ``RetryPolicy``): a run that ended failed or
    lost is run again, as a new run of the same record (``context.attempt``
    says which attempt it is); a user's stop between attempts cancels the rest.
    ``schedule`` (cron, 5 fields or 6 with seconds last; ``schedule_timezone``
    an IANA name, default UTC): the leading controller launches it at each
    fire time, once, skipping a fire that finds it still active.
    ``capture_output``: what the code prints and logs goes to the run's log too
    (on by default for ``isolation="process"``, off in a thread).
    """

    process_id: str
    execute: Execute
    name: str = ""
    detail_level: int = 1
    warning: str = ""
    special: bool = False
    isolation: str = "thread"
    stop_grace_s: float = 10.0
    kill_grace_s: float = 5.0
    timeout_s: float | None = None
    retry: RetryPolicy | None = None
    schedule: str = ""
    schedule_timezone: str = ""
    # What the code prints and logs (``logging``) also goes to the run's log, line by line
    # (``shards_worker.capture``). None: on for isolation="process", off in a thread.
    capture_output: bool | None = None

    def __post_init__(self) -> None:
        check_id(self.process_id, "process_id")
        check_detail_level(self.detail_level)
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be 'thread' or 'process', got {self.isolation!r}")
        for name in ("stop_grace_s", "kill_grace_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        timeout = self.timeout_s
        if timeout is not None and (
            not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0
        ):
            raise ValueError(f"timeout_s must be a number of seconds > 0 (or None), got {self.timeout_s!r}")
        try:
            if self.retry is not None:
                check_retry(self.retry)
            if self.schedule or self.schedule_timezone:
                check_schedule(self.schedule, self.schedule_timezone)
        except InvalidArgument as error:
            raise ValueError(f"process {self.process_id!r}: {error.message}") from error
        if self.isolation == "process":
            try:
                pickle.dumps(self.execute)
            except Exception as error:
                raise ValueError(
                    f"process {self.process_id!r}: isolation='process' needs code that pickles by "
                    f"reference (a module-level function), not {self.execute!r}: {error}"
                ) from error
        if not self.name:
            object.__setattr__(self, "name", self.process_id)

    @property
    def captures_output(self) -> bool:
        return self.capture_output if self.capture_output is not None else self.isolation == "process"

    @property
    def info(self) -> ProcessInfo:
        return ProcessInfo(
            self.process_id,
            self.name,
            self.detail_level,
            self.warning,
            self.special,
            self.timeout_s,
            self.retry,
            self.schedule,
            self.schedule_timezone,
        )


def process(
    process_id: str, *, name: str = "", detail_level: int = 1, warning: str = "", special: bool = False
) -> Callable[[Execute], ProcessDefinition]:
    """Decorator form: ``@process("count-sheep", name="Count sheep")`` over the code."""

    def wrap(execute: Execute) -> ProcessDefinition:
        return ProcessDefinition(process_id, execute, name, detail_level, warning, special)

    return wrap


def _no_scope_data(scope_id: str) -> Any:
    return None


@dataclass(frozen=True, slots=True)
class WorkerApp:
    """A worker application, as the seeds' ``initProcessManagerWorker`` props.

    ``get_scope_data(scope_id)`` turns a scope id into whatever the processes
    of that scope need (a tenant, a project); ``get_process_list(scope_data)``
    lists the definitions for it. ``scopes`` are the scope-id patterns
    (``fnmatch`` style) this app serves.
    """

    get_process_list: Callable[[Any], Iterable[ProcessDefinition]]
    get_scope_data: Callable[[str], Any] = _no_scope_data
    scopes: tuple[str, ...] = field(default=("*",))

    @classmethod
    def of(cls, definitions: Iterable[ProcessDefinition], scopes: tuple[str, ...] = ("*",)) -> WorkerApp:
        """An app whose every scope has the same processes."""
        fixed = tuple(definitions)
        return cls(get_process_list=lambda _scope_data: fixed, scopes=scopes)
