"""Models <-> store documents (plain dicts), shared by every store.

Times stay ``datetime`` (MongoDB stores them natively; the embedded store
encodes them as ISO 8601 strings and ``_time`` reads both back).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from shards.models import NO_PROGRESS, ProcessRecord, Progress, RetryPolicy, Run, WorkerInfo
from shards.states import ProcessState
from shards_controller.store.base import JournalEntry

Doc = dict[str, Any]


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _retry_to_doc(policy: RetryPolicy | None) -> Doc | None:
    if policy is None:
        return None
    return {
        "max_attempts": policy.max_attempts,
        "backoff_s": policy.backoff_s,
        "backoff_multiplier": policy.backoff_multiplier,
        "max_backoff_s": policy.max_backoff_s,
        "on": [state.value for state in policy.on],
    }


def _retry_from_doc(doc: Doc | None) -> RetryPolicy | None:
    if doc is None:
        return None
    return RetryPolicy(
        max_attempts=doc["max_attempts"],
        backoff_s=doc["backoff_s"],
        backoff_multiplier=doc["backoff_multiplier"],
        max_backoff_s=doc["max_backoff_s"],
        on=tuple(ProcessState(value) for value in doc["on"]),
    )


# A record's fields that ``record_from_doc`` reads back as these when they are absent: left out
# of the document when they hold them (a record's document is encoded in every commit, page and
# chunk it is in; most of its 31 fields are at their default most of the time). ``revision``,
# ``state`` and the ids are always there (the embedded store queries ``revision``).
_RECORD_DEFAULTS: dict[str, Any] = {
    "name": "",
    "detail_level": 1,
    "warning": "",
    "special": False,
    "error": "",
    "progress": {"message": "", "rate": 0.0},
    "running_since": None,
    "done_at": None,
    "stopped_at": None,
    "failed_at": None,
    "duration_s": None,
    "run_id": "",
    "parent_run_id": "",
    "worker_id": "",
    "stop_overdue_since": None,
    "timeout_s": None,
    "retry": None,
    "attempt": 0,
    "next_attempt_at": None,
    "schedule": "",
    "schedule_timezone": "",
    "schedule_paused": False,
    "schedule_last_fire_at": None,
    "schedule_last_outcome": "",
    "schedule_fires": 0,
    "schedule_skips": 0,
    "schedule_missed": 0,
}


# The same for a run's document (``run_from_doc``'s defaults); the ids, ``state`` and the
# fields the queries read (``created_ts``, ``active``: ``mongo_commands.run_doc``) always there.
_RUN_DEFAULTS: dict[str, Any] = {
    "error": "",
    "progress": {"message": "", "rate": 0.0},
    "worker_id": "",
    "parent_run_id": "",
    "started_at": None,
    "ended_at": None,
    "log_tail": [],
    "log_lines": 0,
    "log_dropped": 0,
    "stop_overdue_since": None,
    "timeout_s": None,
    "deadline": None,
    "timed_out": False,
    "attempt": 1,
}


def _without_defaults(doc: Doc, defaults: dict[str, Any]) -> Doc:
    for name, default in defaults.items():
        value = doc[name]
        # The type too: a duration of 0.0 s is not "none", nor is 0 False.
        if value == default and type(value) is type(default):
            del doc[name]
    return doc


def record_to_doc(record: ProcessRecord) -> Doc:
    """The record's document, without the fields at their default (``_RECORD_DEFAULTS``)."""
    return _without_defaults(_full_record_doc(record), _RECORD_DEFAULTS)


def _full_record_doc(record: ProcessRecord) -> Doc:
    return {
        "scope_id": record.scope_id,
        "process_id": record.process_id,
        "name": record.name,
        "detail_level": record.detail_level,
        "warning": record.warning,
        "special": record.special,
        "state": record.state.value,
        "error": record.error,
        "progress": {"message": record.progress.message, "rate": record.progress.rate},
        "running_since": record.running_since,
        "done_at": record.done_at,
        "stopped_at": record.stopped_at,
        "failed_at": record.failed_at,
        "duration_s": record.duration.total_seconds() if record.duration is not None else None,
        "run_id": record.run_id,
        "parent_run_id": record.parent_run_id,
        "worker_id": record.worker_id,
        "revision": record.revision,
        "stop_overdue_since": record.stop_overdue_since,
        "timeout_s": record.timeout_s,
        "retry": _retry_to_doc(record.retry),
        "attempt": record.attempt,
        "next_attempt_at": record.next_attempt_at,
        "schedule": record.schedule,
        "schedule_timezone": record.schedule_timezone,
        "schedule_paused": record.schedule_paused,
        "schedule_last_fire_at": record.schedule_last_fire_at,
        "schedule_last_outcome": record.schedule_last_outcome,
        "schedule_fires": record.schedule_fires,
        "schedule_skips": record.schedule_skips,
        "schedule_missed": record.schedule_missed,
    }


def record_from_doc(doc: Doc) -> ProcessRecord:
    progress = doc.get("progress") or {}
    duration_s = doc.get("duration_s")
    message, rate = progress.get("message", ""), progress.get("rate", 0.0)
    return ProcessRecord(
        # One string for a scope's id, one progress for "none": a take-over loads every record
        # at once, and 100,000 of them each with copies of their own held megabytes more.
        scope_id=sys.intern(doc["scope_id"]),
        process_id=doc["process_id"],
        name=doc.get("name", ""),
        detail_level=doc.get("detail_level", 1),
        warning=doc.get("warning", ""),
        special=doc.get("special", False),
        state=ProcessState(doc.get("state", "idle")),
        error=doc.get("error", ""),
        progress=NO_PROGRESS if not message and not rate else Progress(message, rate),
        running_since=_time(doc.get("running_since")),
        done_at=_time(doc.get("done_at")),
        stopped_at=_time(doc.get("stopped_at")),
        failed_at=_time(doc.get("failed_at")),
        duration=timedelta(seconds=duration_s) if duration_s is not None else None,
        run_id=doc.get("run_id", ""),
        parent_run_id=doc.get("parent_run_id", ""),
        worker_id=doc.get("worker_id", ""),
        revision=doc.get("revision", 0),
        stop_overdue_since=_time(doc.get("stop_overdue_since")),
        timeout_s=doc.get("timeout_s"),
        retry=_retry_from_doc(doc.get("retry")),
        attempt=doc.get("attempt", 0),
        next_attempt_at=_time(doc.get("next_attempt_at")),
        schedule=doc.get("schedule", ""),
        schedule_timezone=doc.get("schedule_timezone", ""),
        schedule_paused=doc.get("schedule_paused", False),
        schedule_last_fire_at=_time(doc.get("schedule_last_fire_at")),
        schedule_last_outcome=doc.get("schedule_last_outcome", ""),
        schedule_fires=doc.get("schedule_fires", 0),
        schedule_skips=doc.get("schedule_skips", 0),
        schedule_missed=doc.get("schedule_missed", 0),
    )


def run_to_doc(run: Run) -> Doc:
    """The run's document, without the fields at their default (``_RUN_DEFAULTS``)."""
    return _without_defaults(_full_run_doc(run), _RUN_DEFAULTS)


def _full_run_doc(run: Run) -> Doc:
    return {
        "run_id": run.run_id,
        "scope_id": run.scope_id,
        "process_id": run.process_id,
        "state": run.state.value,
        "error": run.error,
        "progress": {"message": run.progress.message, "rate": run.progress.rate},
        "worker_id": run.worker_id,
        "parent_run_id": run.parent_run_id,
        "idempotency_key": run.idempotency_key,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "log_tail": list(run.log_tail),
        "log_lines": run.log_lines,
        "log_dropped": run.log_dropped,
        "stop_overdue_since": run.stop_overdue_since,
        "timeout_s": run.timeout_s,
        "deadline": run.deadline,
        "timed_out": run.timed_out,
        "attempt": run.attempt,
    }


def run_from_doc(doc: Doc) -> Run:
    progress = doc.get("progress") or {}
    return Run(
        run_id=doc["run_id"],
        scope_id=doc["scope_id"],
        process_id=doc["process_id"],
        state=ProcessState(doc.get("state", "scheduled")),
        error=doc.get("error", ""),
        progress=Progress(progress.get("message", ""), progress.get("rate", 0.0)),
        worker_id=doc.get("worker_id", ""),
        parent_run_id=doc.get("parent_run_id", ""),
        idempotency_key=doc.get("idempotency_key", ""),
        created_at=_time(doc.get("created_at")),
        started_at=_time(doc.get("started_at")),
        ended_at=_time(doc.get("ended_at")),
        log_tail=tuple(doc.get("log_tail", ())),
        log_lines=int(doc.get("log_lines", 0)),
        log_dropped=int(doc.get("log_dropped", 0)),
        stop_overdue_since=_time(doc.get("stop_overdue_since")),
        timeout_s=doc.get("timeout_s"),
        deadline=_time(doc.get("deadline")),
        timed_out=doc.get("timed_out", False),
        attempt=doc.get("attempt", 1),
    )


def worker_to_doc(worker: WorkerInfo) -> Doc:
    return {
        "worker_id": worker.worker_id,
        "address": worker.address,
        "capacity": worker.capacity,
        "scopes": list(worker.scopes),
        "registered_at": worker.registered_at,
        "last_heartbeat_at": worker.last_heartbeat_at,
        "incarnation": worker.incarnation,
    }


def worker_from_doc(doc: Doc) -> WorkerInfo:
    return WorkerInfo(
        worker_id=doc["worker_id"],
        address=doc["address"],
        capacity=doc.get("capacity", 1),
        scopes=tuple(doc.get("scopes", ("*",))),
        registered_at=_time(doc.get("registered_at")),
        last_heartbeat_at=_time(doc.get("last_heartbeat_at")),
        alive=False,  # liveness is the controller's judgement, never stored
        incarnation=doc.get("incarnation", ""),
    )


def journal_to_doc(entry: JournalEntry, record: Doc | None = None) -> Doc:
    """``record``: ``record_to_doc(entry.record)`` when the caller has it already."""
    if record is None and entry.record is not None:
        record = record_to_doc(entry.record)
    return {
        "revision": entry.revision,
        "scope_id": entry.scope_id,
        "process_id": entry.process_id,
        "record": record if entry.record is not None else None,
    }


def journal_from_doc(doc: Doc) -> JournalEntry:
    record = doc.get("record")
    return JournalEntry(
        revision=int(doc["revision"]),
        scope_id=doc["scope_id"],
        process_id=doc["process_id"],
        record=record_from_doc(record) if record is not None else None,
    )
