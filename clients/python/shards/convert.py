"""Translation between the models and the generated protobuf messages.

The only module of the client that touches ``_pb2`` types for records, so the
rest of the code (and the user) sees frozen dataclasses and enums.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from shards.models import (
    DefineResult,
    Identity,
    ProcessInfo,
    ProcessRecord,
    Progress,
    RetryPolicy,
    Run,
    ScheduleInfo,
    ScopeSummary,
    WatchEvent,
    WatchEventType,
    WorkerInfo,
)
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.states import ProcessState

_WATCH_TYPES = {
    WatchEventType.SNAPSHOT: pb.WATCH_EVENT_TYPE_SNAPSHOT,
    WatchEventType.SYNCED: pb.WATCH_EVENT_TYPE_SYNCED,
    WatchEventType.CHANGED: pb.WATCH_EVENT_TYPE_CHANGED,
    WatchEventType.REMOVED: pb.WATCH_EVENT_TYPE_REMOVED,
    WatchEventType.RESET: pb.WATCH_EVENT_TYPE_RESET,
}
_WATCH_TYPES_BACK = {number: kind for kind, number in _WATCH_TYPES.items()}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _dt(message: pb.ProcessRecord | pb.Run | pb.WorkerInfo | pb.Schedule, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    stamp: Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def _seconds(duration: Duration) -> float:
    return float(duration.ToTimedelta().total_seconds())


def retry_to_proto(policy: RetryPolicy | None) -> pb.RetryPolicy | None:
    if policy is None:
        return None
    return pb.RetryPolicy(
        max_attempts=policy.max_attempts,
        backoff=_duration(policy.backoff_s),
        backoff_multiplier=policy.backoff_multiplier,
        max_backoff=_duration(policy.max_backoff_s),
        on=[state.proto_value for state in policy.on],  # type: ignore[misc]
    )


def retry_from_proto(message: pb.RetryPolicy) -> RetryPolicy:
    """As sent (unchecked: ``validation.check_retry`` judges it); unset fields get the defaults."""
    default = RetryPolicy()
    return RetryPolicy(
        max_attempts=message.max_attempts,
        backoff_s=_seconds(message.backoff) if message.HasField("backoff") else default.backoff_s,
        backoff_multiplier=message.backoff_multiplier or default.backoff_multiplier,
        max_backoff_s=_seconds(message.max_backoff)
        if message.HasField("max_backoff")
        else default.max_backoff_s,
        on=tuple(ProcessState.from_proto(number) for number in message.on) or default.on,
    )


def progress_to_proto(progress: Progress) -> pb.Progress:
    return pb.Progress(message=progress.message, rate=progress.rate)


def progress_from_proto(message: pb.Progress) -> Progress:
    return Progress(message.message, message.rate)


def info_to_proto(info: ProcessInfo) -> pb.ProcessDefinition:
    return pb.ProcessDefinition(
        process_id=info.process_id,
        name=info.name,
        detail_level=info.detail_level,
        warning=info.warning,
        special=info.special,
        timeout=_duration(info.timeout_s),
        retry=retry_to_proto(info.retry),
        schedule=info.schedule,
        schedule_timezone=info.schedule_timezone,
    )


def info_from_proto(message: pb.ProcessDefinition) -> ProcessInfo:
    return ProcessInfo(
        process_id=message.process_id,
        name=message.name or message.process_id,
        detail_level=message.detail_level or 1,
        warning=message.warning,
        special=message.special,
        timeout_s=_seconds(message.timeout) if message.HasField("timeout") else None,
        retry=retry_from_proto(message.retry) if message.HasField("retry") else None,
        schedule=message.schedule,
        schedule_timezone=message.schedule_timezone,
    )


def record_to_proto(record: ProcessRecord) -> pb.ProcessRecord:
    duration = None
    if record.duration is not None:
        duration = Duration()
        duration.FromTimedelta(record.duration)
    return pb.ProcessRecord(
        scope_id=record.scope_id,
        process_id=record.process_id,
        name=record.name,
        detail_level=record.detail_level,
        warning=record.warning,
        special=record.special,
        state=record.state.proto_value,  # type: ignore[arg-type]
        error=record.error,
        progress=progress_to_proto(record.progress),
        running_since=_ts(record.running_since),
        done_at=_ts(record.done_at),
        stopped_at=_ts(record.stopped_at),
        failed_at=_ts(record.failed_at),
        duration=duration,
        run_id=record.run_id,
        parent_run_id=record.parent_run_id,
        worker_id=record.worker_id,
        revision=record.revision,
        stop_overdue_since=_ts(record.stop_overdue_since),
        timeout=_duration(record.timeout_s),
        retry=retry_to_proto(record.retry),
        attempt=record.attempt,
        next_attempt_at=_ts(record.next_attempt_at),
        schedule=record.schedule,
        schedule_timezone=record.schedule_timezone,
        schedule_paused=record.schedule_paused,
        schedule_last_fire_at=_ts(record.schedule_last_fire_at),
        schedule_last_outcome=record.schedule_last_outcome,
        schedule_fires=record.schedule_fires,
        schedule_skips=record.schedule_skips,
        schedule_missed=record.schedule_missed,
    )


def record_from_proto(message: pb.ProcessRecord) -> ProcessRecord:
    return ProcessRecord(
        scope_id=message.scope_id,
        process_id=message.process_id,
        name=message.name,
        detail_level=message.detail_level,
        warning=message.warning,
        special=message.special,
        state=ProcessState.from_proto(message.state),
        error=message.error,
        progress=progress_from_proto(message.progress),
        running_since=_dt(message, "running_since"),
        done_at=_dt(message, "done_at"),
        stopped_at=_dt(message, "stopped_at"),
        failed_at=_dt(message, "failed_at"),
        duration=message.duration.ToTimedelta() if message.HasField("duration") else None,
        run_id=message.run_id,
        parent_run_id=message.parent_run_id,
        worker_id=message.worker_id,
        revision=message.revision,
        stop_overdue_since=_dt(message, "stop_overdue_since"),
        timeout_s=_seconds(message.timeout) if message.HasField("timeout") else None,
        retry=retry_from_proto(message.retry) if message.HasField("retry") else None,
        attempt=message.attempt,
        next_attempt_at=_dt(message, "next_attempt_at"),
        schedule=message.schedule,
        schedule_timezone=message.schedule_timezone,
        schedule_paused=message.schedule_paused,
        schedule_last_fire_at=_dt(message, "schedule_last_fire_at"),
        schedule_last_outcome=message.schedule_last_outcome,
        schedule_fires=message.schedule_fires,
        schedule_skips=message.schedule_skips,
        schedule_missed=message.schedule_missed,
    )


def run_to_proto(run: Run) -> pb.Run:
    return pb.Run(
        run_id=run.run_id,
        scope_id=run.scope_id,
        process_id=run.process_id,
        state=run.state.proto_value,  # type: ignore[arg-type]
        error=run.error,
        progress=progress_to_proto(run.progress),
        worker_id=run.worker_id,
        parent_run_id=run.parent_run_id,
        idempotency_key=run.idempotency_key,
        created_at=_ts(run.created_at),
        started_at=_ts(run.started_at),
        ended_at=_ts(run.ended_at),
        log_tail=list(run.log_tail),
        log_lines=run.log_lines,
        log_dropped=run.log_dropped,
        stop_overdue_since=_ts(run.stop_overdue_since),
        deadline=_ts(run.deadline),
        timeout=_duration(run.timeout_s),
        timed_out=run.timed_out,
        attempt=run.attempt,
    )


def run_from_proto(message: pb.Run) -> Run:
    return Run(
        run_id=message.run_id,
        scope_id=message.scope_id,
        process_id=message.process_id,
        state=ProcessState.from_proto(message.state),
        error=message.error,
        progress=progress_from_proto(message.progress),
        worker_id=message.worker_id,
        parent_run_id=message.parent_run_id,
        idempotency_key=message.idempotency_key,
        created_at=_dt(message, "created_at"),
        started_at=_dt(message, "started_at"),
        ended_at=_dt(message, "ended_at"),
        log_tail=tuple(message.log_tail),
        log_lines=message.log_lines,
        log_dropped=message.log_dropped,
        stop_overdue_since=_dt(message, "stop_overdue_since"),
        deadline=_dt(message, "deadline"),
        timeout_s=_seconds(message.timeout) if message.HasField("timeout") else None,
        timed_out=message.timed_out,
        attempt=message.attempt or 1,
    )


def schedule_to_proto(schedule: ScheduleInfo) -> pb.Schedule:
    return pb.Schedule(
        scope_id=schedule.scope_id,
        process_id=schedule.process_id,
        schedule=schedule.schedule,
        timezone=schedule.timezone,
        paused=schedule.paused,
        next_fire_at=_ts(schedule.next_fire_at),
        last_fire_at=_ts(schedule.last_fire_at),
        last_outcome=schedule.last_outcome,
        fires=schedule.fires,
        skips=schedule.skips,
        missed=schedule.missed,
    )


def schedule_from_proto(message: pb.Schedule) -> ScheduleInfo:
    return ScheduleInfo(
        scope_id=message.scope_id,
        process_id=message.process_id,
        schedule=message.schedule,
        timezone=message.timezone,
        paused=message.paused,
        next_fire_at=message.next_fire_at.ToDatetime(tzinfo=UTC)
        if message.HasField("next_fire_at")
        else None,
        last_fire_at=message.last_fire_at.ToDatetime(tzinfo=UTC)
        if message.HasField("last_fire_at")
        else None,
        last_outcome=message.last_outcome,
        fires=message.fires,
        skips=message.skips,
        missed=message.missed,
    )


def worker_to_proto(worker: WorkerInfo) -> pb.WorkerInfo:
    return pb.WorkerInfo(
        worker_id=worker.worker_id,
        address=worker.address,
        capacity=worker.capacity,
        running=worker.running,
        scopes=list(worker.scopes),
        registered_at=_ts(worker.registered_at),
        last_heartbeat_at=_ts(worker.last_heartbeat_at),
        alive=worker.alive,
    )


def worker_from_proto(message: pb.WorkerInfo) -> WorkerInfo:
    return WorkerInfo(
        worker_id=message.worker_id,
        address=message.address,
        capacity=message.capacity,
        running=message.running,
        scopes=tuple(message.scopes),
        registered_at=_dt(message, "registered_at"),
        last_heartbeat_at=_dt(message, "last_heartbeat_at"),
        alive=message.alive,
    )


def watch_event_to_proto(event: WatchEvent) -> pb.WatchProcessesResponse:
    return pb.WatchProcessesResponse(
        type=_WATCH_TYPES[event.type],
        revision=event.revision,
        process=record_to_proto(event.process) if event.process is not None else None,
    )


def watch_event_from_proto(message: pb.WatchProcessesResponse) -> WatchEvent:
    return WatchEvent(
        type=_WATCH_TYPES_BACK[message.type],
        revision=message.revision,
        process=record_from_proto(message.process) if message.HasField("process") else None,
    )


def duration_from_timedelta(value: timedelta) -> Duration:
    message = Duration()
    message.FromTimedelta(value)
    return message


def scope_summary_to_proto(summary: ScopeSummary) -> pb.ScopeSummary:
    return pb.ScopeSummary(
        scope_id=summary.scope_id,
        processes=summary.processes,
        counts_by_state={str(state): n for state, n in summary.counts_by_state},
        active=summary.active,
    )


def scope_summary_from_proto(message: pb.ScopeSummary) -> ScopeSummary:
    counts = []
    for name, n in sorted(message.counts_by_state.items()):
        try:
            counts.append((ProcessState(name), n))
        except ValueError:
            continue  # a state this client does not know yet
    return ScopeSummary(message.scope_id, message.processes, tuple(counts), message.active)


def identity_from_proto(message: pb.WhoAmIResponse, scope_id: str) -> Identity:
    return Identity(
        message.principal, message.auth_enabled, message.kind, scope_id, frozenset(message.actions)
    )


def define_result_from_proto(message: pb.DefineProcessesResponse | pb.ResetProcessesResponse) -> DefineResult:
    return DefineResult(
        processes=tuple(record_from_proto(p) for p in message.processes),
        added=tuple(message.added),
        removed=tuple(message.removed),
        kept=tuple(message.kept) if isinstance(message, pb.DefineProcessesResponse) else (),
        wiped=message.wiped,
    )
