"""Rich renderings of processes, runs and workers, shared by ``shards`` and the demo.

Nothing here talks to a controller: functions take models and return rich
renderables. ``ProcessBoard`` folds a watch stream into the current table and
can be handed to ``rich.live.Live`` as is (it renders on every refresh).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import IO

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from shards.models import ProcessRecord, Progress, Run, WatchEvent, WatchEventType, WorkerInfo, sort_key
from shards.overdue import OVERDUE_ADVICE
from shards.states import ProcessState

S = ProcessState

STATE_STYLES: dict[ProcessState, str] = {
    S.IDLE: "dim",
    S.SCHEDULED: "yellow",
    S.RUNNING: "cyan",
    S.STOP_REQUESTED: "yellow",
    S.STOPPING: "yellow",
    S.STOPPED: "yellow",
    S.DONE: "green",
    S.FAILED: "bold red",
    S.LOST: "bold red",
}
WARNING_MARKER = "⚠"
BAR_WIDTH = 12
# Wide enough for the process table when the output is a pipe or a file.
PLAIN_WIDTH = 150


def make_console(file: IO[str] | None = None) -> Console:
    """A console for ``file`` (stdout): a terminal's width, or a fixed readable width when piped."""
    console = Console(file=file or sys.stdout, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file or sys.stdout, highlight=False, width=PLAIN_WIDTH)
    return console


def state_text(state: ProcessState) -> Text:
    """The state in its colour: done green, failed/lost red, running cyan, idle dim, the rest yellow."""
    return Text(str(state), style=STATE_STYLES.get(state, ""))


def format_duration(duration: timedelta | None) -> str:
    """``2.4s``, ``3m05s``, ``2h03m``; empty for None."""
    if duration is None:
        return ""
    seconds = max(0.0, duration.total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_time(moment: datetime | None) -> str:
    """Local wall-clock time, ``HH:MM:SS``."""
    return moment.astimezone().strftime("%H:%M:%S") if moment is not None else ""


def format_clock_duration(duration: timedelta | None) -> str:
    """``0:05``, ``12:30``, ``1:02:03`` (the original's UI); empty for None."""
    if duration is None:
        return ""
    minutes, seconds = divmod(max(0, round(duration.total_seconds())), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def ended_at(record: ProcessRecord) -> datetime | None:
    """When the last run ended: done_at, stopped_at or failed_at, by its state."""
    if record.state is S.DONE:
        return record.done_at
    if record.state is S.STOPPED:
        return record.stopped_at
    if record.state in (S.FAILED, S.LOST):
        return record.failed_at
    return None


def when_text(record: ProcessRecord, now: datetime | None = None) -> str:
    """The time of day an ended run ended, as the original's UI says it; the running time while active.

    ``Finished at 10:42:03, in 0:05``, ``Stopped at 10:42:03``; a failure's
    time is in the error column (``<error> at 10:42:03``), its duration here.
    """
    if record.state.is_active:
        return format_duration(record_duration(record, now))
    moment = ended_at(record)
    if moment is None:
        return ""
    took = format_clock_duration(record.duration)
    if record.state is S.DONE:
        return f"Finished at {format_time(moment)}" + (f", in {took}" if took else "")
    if record.state is S.STOPPED:
        return f"Stopped at {format_time(moment)}"
    after = f"after {took}" if took else ""
    if record.error:  # the error column says when: "<error> at 10:42:03"
        return after
    verb = "Lost" if record.state is S.LOST else "Failed"
    return f"{verb} at {format_time(moment)}" + (f", {after}" if after else "")


def error_text(record: ProcessRecord) -> str:
    """The error, with the time of day it came (``<error> at 10:42:03``)."""
    if not record.error:
        return ""
    moment = ended_at(record)
    return f"{record.error} at {format_time(moment)}" if moment is not None else record.error


def record_duration(record: ProcessRecord, now: datetime | None = None) -> timedelta | None:
    """How long the current run has run (live while active), or how long the last one took."""
    if record.state.is_active:
        if record.running_since is None:
            return None
        return (now or datetime.now(UTC)) - record.running_since
    return record.duration


def progress_bar(rate: float, style: str = "bar.complete", width: int = BAR_WIDTH) -> Text:
    """A bar of ``width`` cells for ``rate`` in 0..1, as text; readable without colours too."""
    filled = round(max(0.0, min(1.0, rate)) * width)
    return Text.assemble(("━" * filled, style), ("─" * (width - filled), "bar.back"))


def progress_cell(progress: Progress, state: ProcessState) -> Text:
    """A bar, the percentage and the message; empty before the first report."""
    if not progress.message and not progress.rate and not state.is_active:
        return Text("")
    style = "bar.finished" if state is S.DONE else "bar.complete"
    if state.is_end and state is not S.DONE:
        style = STATE_STYLES[state]
    cell = progress_bar(progress.rate, style)
    cell.append(f" {progress.rate:>4.0%} ")
    cell.append(progress.message)
    return cell


def process_label(record: ProcessRecord) -> Text:
    """The process id, indented by detail level, with a marker when launching needs confirmation."""
    label = Text("  " * max(0, record.detail_level - 1))
    label.append(record.process_id, style="bold" if record.detail_level <= 1 else "")
    if record.warning:
        label.append(f" {WARNING_MARKER}", style="yellow")
    if record.special:
        label.append(" *", style="magenta")
    return label


def record_state(record: ProcessRecord) -> Text:
    """The state, and a stop that is overdue (the code ignores it and cannot be forced)."""
    text = state_text(record.state)
    if record.attempts_text:
        text.append(f" ({record.attempts_text})", style="dim")
    if record.next_attempt_at is not None:
        text.append(f" next attempt at {format_time(record.next_attempt_at)}", style="yellow")
    if record.stop_overdue_since is not None:
        text.append(f" (stop overdue since {format_time(record.stop_overdue_since)})", style="bold yellow")
    return text


def process_table(
    records: Iterable[ProcessRecord], *, title: str | None = None, now: datetime | None = None
) -> Table:
    """The ``shards ps`` table, by detail level then name."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("Process", no_wrap=True)
    table.add_column("Name")
    table.add_column("Level", justify="right")
    table.add_column("State", no_wrap=True)
    table.add_column("Progress")
    table.add_column("Error", style="red", overflow="fold", max_width=44)
    table.add_column("When", no_wrap=True)
    moment = now or datetime.now(UTC)
    rows = sorted(records, key=sort_key)
    for record in rows:
        table.add_row(
            process_label(record),
            Text(record.name),
            str(record.detail_level),
            record_state(record),
            progress_cell(record.progress, record.state),
            Text(error_text(record)),
            when_text(record, moment),
        )
    captions = []
    if any(record.warning for record in rows):
        captions.append(f"{WARNING_MARKER} asks for confirmation before launch")
    if any(record.stop_overdue_since is not None and OVERDUE_ADVICE not in record.error for record in rows):
        # A record whose error carries the advice (as the controller sets it) says it in its row.
        captions.append(f"stop overdue: the code ignores the stop; {OVERDUE_ADVICE}")
    if captions:
        table.caption = "\n".join(captions)
        table.caption_justify = "left"
    return table


def record_detail(record: ProcessRecord) -> Table:
    """Every field of one record (``shards get``), one per line."""
    table = Table(title=f"{record.scope_id} / {record.process_id}", title_justify="left", show_header=False)
    table.add_column("Field", style="bold", no_wrap=True)
    table.add_column("Value", overflow="fold")

    def moment(value: datetime | None) -> str:
        return value.astimezone().isoformat(sep=" ", timespec="milliseconds") if value is not None else ""

    progress = record.progress
    rows: list[tuple[str, RenderableType]] = [
        ("scope", record.scope_id),
        ("process", record.process_id),
        ("name", Text(record.name)),
        ("detail level", str(record.detail_level)),
        ("warning", Text(record.warning)),
        ("special", "yes" if record.special else "no"),
        ("state", state_text(record.state)),
        ("progress", Text(f"{progress.rate:.0%} {progress.message}".rstrip())),
        ("error", Text(record.error, style="red")),
        ("stop overdue since", moment(record.stop_overdue_since)),
        ("attempt", record.attempts_text or (str(record.attempt) if record.attempt else "")),
        ("next attempt at", moment(record.next_attempt_at)),
        ("running since", moment(record.running_since)),
        ("done at", moment(record.done_at)),
        ("stopped at", moment(record.stopped_at)),
        ("failed at", moment(record.failed_at)),
        ("duration", format_clock_duration(record.duration)),
        ("run", record.run_id),
        ("parent run", record.parent_run_id),
        ("worker", Text(record.worker_id)),
        ("revision", str(record.revision)),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table


def runs_table(runs: Iterable[Run], *, title: str | None = None) -> Table:
    """The ``shards runs`` table, in the order given (newest first from the controller)."""
    table = Table(title=title, title_justify="left")
    table.add_column("Run", no_wrap=True)
    table.add_column("Process", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Started", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column("Worker", overflow="fold", min_width=10)
    table.add_column("Error", style="red", overflow="fold", min_width=10, max_width=44)
    table.add_column("Parent run", overflow="fold", min_width=10)
    now = datetime.now(UTC)
    for run in runs:
        duration = None
        if run.started_at is not None:
            duration = (run.ended_at or now) - run.started_at
        table.add_row(
            run.run_id,
            run.process_id,
            state_text(run.state),
            format_time(run.started_at or run.created_at),
            format_duration(duration),
            Text(run.worker_id),
            Text(run.error),
            run.parent_run_id,
        )
    return table


def workers_table(workers: Iterable[WorkerInfo], *, title: str | None = None) -> Table:
    """The ``shards workers`` table."""
    table = Table(title=title, title_justify="left")
    table.add_column("Worker", no_wrap=True)
    table.add_column("Address", no_wrap=True)
    table.add_column("Running", justify="right")
    table.add_column("Scopes")
    table.add_column("Alive")
    table.add_column("Registered", no_wrap=True)
    table.add_column("Last heartbeat", no_wrap=True)
    for worker in workers:
        table.add_row(
            Text(worker.worker_id),
            Text(worker.address),
            f"{worker.running}/{worker.capacity}",
            Text(", ".join(worker.scopes)),
            Text("yes", style="green") if worker.alive else Text("no", style="bold red"),
            format_time(worker.registered_at),
            format_time(worker.last_heartbeat_at),
        )
    return table


def state_change_line(record: ProcessRecord, now: datetime | None = None) -> Text:
    """One line for a state change, for output that is not a live terminal."""
    line = Text(f"{format_time(now or datetime.now(UTC))}  ")
    line.append(record.process_id, style="bold")
    line.append("  ")
    line.append_text(record_state(record))
    if record.stop_overdue_since is not None and OVERDUE_ADVICE not in record.error:
        line.append(f": the code ignores the stop; {OVERDUE_ADVICE}", style="yellow")
    if record.state.is_end:
        duration = format_duration(record.duration)
        if duration:
            line.append(f" after {duration}")
    if record.error:
        line.append(f": {record.error}", style="red")
    elif record.state.is_end and record.progress.message:
        line.append(f" ({record.progress.message})", style="dim")
    return line


class ProcessBoard:
    """The current records of a watched scope, folded from ``WatchEvent``s.

    Give it to ``rich.live.Live``: it renders the table anew at each refresh,
    so running durations tick even between events.
    """

    def __init__(self, title: str | None = None) -> None:
        self.title = title
        self.synced = False
        self._records: dict[str, ProcessRecord] = {}

    def apply(self, event: WatchEvent) -> ProcessRecord | None:
        """Fold ``event`` in; returns the record when its state (or run) changed, else None."""
        if event.type is WatchEventType.RESET:
            self._records = {}
            return None
        if event.type is WatchEventType.SYNCED:
            self.synced = True
            return None
        record = event.process
        if record is None:
            return None
        if event.type is WatchEventType.REMOVED:
            self._records.pop(record.process_id, None)
            return None
        previous = self._records.get(record.process_id)
        self._records[record.process_id] = record
        if previous is None or previous.state is not record.state or previous.run_id != record.run_id:
            return record
        return None

    def get(self, process_id: str) -> ProcessRecord | None:
        return self._records.get(process_id)

    def records(self) -> list[ProcessRecord]:
        """By detail level, then name."""
        return sorted(list(self._records.values()), key=sort_key)

    def table(self, now: datetime | None = None) -> Table:
        return process_table(self.records(), title=self.title, now=now)

    def __rich__(self) -> RenderableType:
        return self.table()


__all__ = [
    "STATE_STYLES",
    "WARNING_MARKER",
    "ProcessBoard",
    "error_text",
    "format_clock_duration",
    "format_duration",
    "format_time",
    "make_console",
    "process_table",
    "progress_bar",
    "progress_cell",
    "record_detail",
    "record_duration",
    "runs_table",
    "state_change_line",
    "state_text",
    "when_text",
    "workers_table",
]
