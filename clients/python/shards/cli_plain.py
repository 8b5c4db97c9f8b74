"""The ``shards ps`` table for big scopes: the same columns as ``cli_render.process_table``, as plain text.

rich lays out a table by measuring every cell of every column, and wraps and
crops each one: for 10,000 records that took 13 s (0.3 s of it the call).
This renders the same rows, with the same box characters, in one pass over
the cells: column widths are the widest cell (the error column capped, as
rich does it), long cells are cut with "…", and nothing wraps.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from shards.cli_render import (
    WARNING_MARKER,
    format_duration,
    process_label,
    progress_cell,
    record_duration,
    record_state,
)
from shards.models import ProcessRecord, sort_key

#: From this many records on, ``shards ps`` renders plain text (under it, rich's table).
PLAIN_FROM = 500
_HEADERS = ("Process", "Name", "Level", "State", "Progress", "Error", "Duration")
_RIGHT = {2, 6}  # Level, Duration
_MAX_WIDTH = {1: 40, 4: 40, 5: 44}  # Name, Progress, Error


def _fit(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def plain_process_table(
    records: Iterable[ProcessRecord], *, title: str | None = None, now: datetime | None = None
) -> str:
    """The process table as text (a trailing newline included)."""
    moment = now or datetime.now(UTC)
    rows = sorted(records, key=sort_key)
    cells = [
        (
            process_label(record).plain,
            record.name,
            str(record.detail_level),
            record_state(record).plain,
            progress_cell(record.progress, record.state).plain,
            record.error,
            format_duration(record_duration(record, moment)),
        )
        for record in rows
    ]
    widths = [len(header) for header in _HEADERS]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    widths = [min(width, _MAX_WIDTH.get(index, width)) for index, width in enumerate(widths)]

    def line(row: tuple[str, ...]) -> str:
        parts = []
        for index, cell in enumerate(row):
            fitted = _fit(cell, widths[index])
            parts.append(fitted.rjust(widths[index]) if index in _RIGHT else fitted.ljust(widths[index]))
        return "│ " + " │ ".join(parts) + " │"

    def rule(left: str, middle: str, right: str) -> str:
        return left + middle.join("─" * (width + 2) for width in widths) + right

    out = [title] if title else []
    heavy = [rule("┏", "┳", "┓"), line(_HEADERS).replace("│", "┃"), rule("┡", "╇", "┩")]
    out += [heavy[0].replace("─", "━"), heavy[1], heavy[2].replace("─", "━")]
    out += [line(row) for row in cells]
    out.append(rule("└", "┴", "┘"))
    if any(record.warning for record in rows):
        out.append(f"{WARNING_MARKER} asks for confirmation before launch")
    return "\n".join(out) + "\n"
