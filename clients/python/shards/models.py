"""Frozen value objects shared by the client and the services.

Nothing here knows about protobuf; ``shards.convert`` translates at the edge.
Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from shards import search
from shards.states import ProcessState


@dataclass(frozen=True, slots=True)
class Progress:
    """The latest progress a process reported: a message and a rate in 0..1."""

    message: str = ""
    rate: float = 0.0


NO_PROGRESS = Progress()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a run that ended ``failed`` (or ``lost``) is run again: a new run of the same record.

    ``max_attempts`` counts the first run. Attempt n+1 waits
    ``backoff_s * backoff_multiplier ** (n - 1)``, at most ``max_backoff_s``.
    """

    max_attempts: int = 3
    backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_s: float = 60.0
    on: tuple[ProcessState, ...] = (ProcessState.FAILED, ProcessState.LOST)

    def delay_s(self, attempt: int) -> float:
        """The wait after attempt ``attempt`` (1-based) ended, before the next."""
        return float(min(self.backoff_s * self.backoff_multiplier ** max(attempt - 1, 0), self.max_backoff_s))


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What a worker app declares about a process (the code stays on the worker)."""

    process_id: str
    name: str = ""
    detail_level: int = 1
    warning: str = ""
    special: bool = False
    timeout_s: float | None = None  # a run's time limit (None: none)
    retry: RetryPolicy | None = None
    schedule: str = ""  # cron; the leader launches it at each fire time
    schedule_timezone: str = ""  # IANA name; "" is UTC


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """The status of one process in one scope, keyed by (scope_id, process_id)."""

    scope_id: str
    process_id: str
    name: str = ""
    detail_level: int = 1
    warning: str = ""
    special: bool = False
    state: ProcessState = ProcessState.IDLE
    error: str = ""
    progress: Progress = NO_PROGRESS
    running_since: datetime | None = None
    done_at: datetime | None = None
    stopped_at: datetime | None = None
    failed_at: datetime | None = None
    duration: timedelta | None = None
    run_id: str = ""
    parent_run_id: str = ""
    worker_id: str = ""
    revision: int = 0
    # Set while a stop is overdue: the code (in a thread) has not returned within its stop grace.
    stop_overdue_since: datetime | None = None
    timeout_s: float | None = None  # the definition's time limit (None: none)
    retry: RetryPolicy | None = None  # the definition's retry policy
    attempt: int = 0  # of the current or last run (0: never launched)
    next_attempt_at: datetime | None = None  # the next attempt waits for this time (a stop cancels it)
    schedule: str = ""  # the definition's cron schedule ("" none)
    schedule_timezone: str = ""
    schedule_paused: bool = False
    # The newest fire time handled, and what came of it (launched, skipped, missed).
    schedule_last_fire_at: datetime | None = None
    schedule_last_outcome: str = ""
    schedule_fires: int = 0  # fire times that launched a run
    schedule_skips: int = 0  # fire times that found the process active
    schedule_missed: int = 0  # fire times missed while no controller led, past the catch-up window

    @property
    def attempts_text(self) -> str:
        """ "attempt 2 of 5" when the process retries, else ""."""
        if self.retry is None or not self.attempt:
            return ""
        return f"attempt {self.attempt} of {self.retry.max_attempts}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.scope_id, self.process_id)

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


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of a process."""

    run_id: str
    scope_id: str
    process_id: str
    state: ProcessState = ProcessState.SCHEDULED
    error: str = ""
    progress: Progress = NO_PROGRESS
    worker_id: str = ""
    parent_run_id: str = ""
    idempotency_key: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    log_tail: tuple[str, ...] = ()
    stop_overdue_since: datetime | None = None
    timeout_s: float | None = None  # this run's time limit, from its start (None: none)
    deadline: datetime | None = None  # set at its start: it times out past this
    timed_out: bool = False  # the controller stopped it at its deadline: it ends failed
    attempt: int = 1  # 1 for a launch, 2... for its retries
    # Its whole log (set at its end): the lines it logged, and the oldest dropped past the cap.
    log_lines: int = 0
    log_dropped: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.scope_id, self.process_id)


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A process's schedule, as ``ListSchedules`` shows it."""

    scope_id: str
    process_id: str
    schedule: str
    timezone: str = "UTC"
    paused: bool = False
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_outcome: str = ""
    fires: int = 0
    skips: int = 0
    missed: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as the controller sees it."""

    worker_id: str
    address: str
    capacity: int = 1
    running: int = 0
    scopes: tuple[str, ...] = ("*",)
    registered_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    alive: bool = True
    incarnation: str = ""


@dataclass(frozen=True, slots=True)
class ScopeSummary:
    """A scope with records, and how many of them are in each state."""

    scope_id: str
    processes: int = 0
    counts_by_state: tuple[tuple[ProcessState, int], ...] = ()
    active: int = 0

    def count(self, state: ProcessState) -> int:
        return dict(self.counts_by_state).get(state, 0)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the caller is to the controller, and what it may do in one scope (WhoAmI)."""

    principal: str
    auth_enabled: bool = False
    kind: str = "anonymous"
    scope_id: str = ""
    actions: frozenset[str] = frozenset()

    def may(self, action: str) -> bool:
        return action in self.actions


class WatchEventType(enum.StrEnum):
    SNAPSHOT = "snapshot"
    SYNCED = "synced"
    CHANGED = "changed"
    REMOVED = "removed"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One message of a watch stream."""

    type: WatchEventType
    revision: int
    process: ProcessRecord | None = None


@dataclass(frozen=True, slots=True)
class LaunchResult:
    run_id: str
    process: ProcessRecord
    deduplicated: bool = False


@dataclass(frozen=True, slots=True)
class ProcessFilter:
    """Which records of a scope a list or a watch returns.

    As in the original's UI, an active process always passes the detail
    level and special filters: what runs is never hidden. The searches
    (``name_contains``, a substring, and ``name_regex``, a case-insensitive
    RE2 pattern) look in the name and the process id.
    """

    scope_id: str
    name_contains: str = ""
    max_detail_level: int = 0
    name_regex: str = ""
    hide_special: bool = False
    active_only: bool = False

    @property
    def depends_on_state(self) -> bool:
        """Whether a record can move in or out of the filter as its state changes."""
        return self.active_only or self.hide_special or bool(self.max_detail_level)

    def matches(self, record: ProcessRecord) -> bool:
        if record.scope_id != self.scope_id:
            return False
        active = record.state.is_active
        if self.active_only and not active:
            return False
        if not active:
            if self.max_detail_level and record.detail_level > self.max_detail_level:
                return False
            if self.hide_special and record.special:
                return False
        if self.name_contains:
            needle = self.name_contains.casefold()
            if needle not in record.name.casefold() and needle not in record.process_id.casefold():
                return False
        if self.name_regex:
            return search.matches(self.name_regex, record.name, record.process_id)
        return True


@dataclass(frozen=True, slots=True)
class DefineResult:
    """What a define (or a reset) did to a scope's catalog.

    ``added``: process ids that got a record; ``removed``: those whose record
    went (no longer listed by the workers, or wiped and not listed again);
    ``kept``: no longer listed but active, so removed once their run ends;
    ``wiped``: records wiped (statuses too) before defining (clean, reset).
    """

    processes: tuple[ProcessRecord, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    wiped: int = 0


def sort_key(record: ProcessRecord) -> tuple[int, str, str]:
    """The seeds' order: by detail level, then name."""
    return (record.detail_level, record.name.casefold(), record.process_id)


__all__ = [
    "NO_PROGRESS",
    "DefineResult",
    "Identity",
    "LaunchResult",
    "ProcessFilter",
    "ProcessInfo",
    "ProcessRecord",
    "Progress",
    "RetryPolicy",
    "Run",
    "ScheduleInfo",
    "ScopeSummary",
    "WatchEvent",
    "WatchEventType",
    "WorkerInfo",
    "sort_key",
]
