"""The models as JSON for the page: times in epoch milliseconds, durations in seconds."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shards.models import Identity, ProcessRecord, Run, ScopeSummary, WorkerInfo


def _ms(value: datetime | None) -> float | None:
    return None if value is None else round(value.timestamp() * 1000, 3)


def _s(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


#: Always in a record's JSON; the other fields are left out while empty (None, "", false,
#: no progress), which makes a large scope's snapshot about four times smaller.
_KEPT = frozenset({"process_id", "name", "detail_level", "state", "revision"})
_NO_PROGRESS = {"message": "", "rate": 0.0}


def record(r: ProcessRecord) -> dict[str, Any]:
    full = _record(r)
    return {k: v for k, v in full.items() if k in _KEPT or (v and v != _NO_PROGRESS)}


def _record(r: ProcessRecord) -> dict[str, Any]:
    return {
        "process_id": r.process_id,
        "name": r.name,
        "detail_level": r.detail_level,
        "warning": r.warning,
        "special": r.special,
        "state": str(r.state),
        "error": r.error,
        "progress": {"message": r.progress.message, "rate": r.progress.rate},
        "running_since": _ms(r.running_since),
        "done_at": _ms(r.done_at),
        "stopped_at": _ms(r.stopped_at),
        "failed_at": _ms(r.failed_at),
        "duration": _s(r.duration),
        "run_id": r.run_id,
        "parent_run_id": r.parent_run_id,
        "worker_id": r.worker_id,
        "revision": r.revision,
        # a stop the code (in a thread) ignores past its grace: the table says so, and what to do
        "stop_overdue_since": _ms(r.stop_overdue_since),
        "timeout_s": r.timeout_s,
        # "attempt 2 of 5" and when the next is due, for a process that retries
        "attempt": r.attempt if r.retry is not None else 0,
        "max_attempts": r.retry.max_attempts if r.retry is not None else 0,
        "next_attempt_at": _ms(r.next_attempt_at),
    }


def run(r: Run) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "process_id": r.process_id,
        "state": str(r.state),
        "error": r.error,
        "progress": {"message": r.progress.message, "rate": r.progress.rate},
        "worker_id": r.worker_id,
        "parent_run_id": r.parent_run_id,
        "created_at": _ms(r.created_at),
        "started_at": _ms(r.started_at),
        "ended_at": _ms(r.ended_at),
        "log_tail": list(r.log_tail),
        "stop_overdue_since": _ms(r.stop_overdue_since),
        "timeout_s": r.timeout_s,
        "timed_out": r.timed_out,
        "attempt": r.attempt,
    }


def worker(w: WorkerInfo) -> dict[str, Any]:
    return {
        "worker_id": w.worker_id,
        "address": w.address,
        "capacity": w.capacity,
        "running": w.running,
        "scopes": list(w.scopes),
        "registered_at": _ms(w.registered_at),
        "last_heartbeat_at": _ms(w.last_heartbeat_at),
        "alive": w.alive,
    }


def scope(s: ScopeSummary) -> dict[str, Any]:
    return {
        "scope_id": s.scope_id,
        "processes": s.processes,
        "active": s.active,
        "counts": {str(state): n for state, n in s.counts_by_state},
    }


def identity(i: Identity) -> dict[str, Any]:
    return {
        "principal": i.principal,
        "auth_enabled": i.auth_enabled,
        "kind": i.kind,
        "scope_id": i.scope_id,
        "actions": sorted(i.actions),
    }
