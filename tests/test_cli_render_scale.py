"""``shards ps`` of 10,000 processes renders in a fraction of rich's time (issue 10, item 10).

rich measured, wrapped and cropped every cell: 13 s for 10,000 rows (0.3 s
of it the call). Measured here in CPU time, so a busy machine does not decide.
"""

from __future__ import annotations

import io
import time

from rich.console import Console

from shards.cli.processes import _print_table
from shards.models import ProcessRecord, Progress
from shards.states import ProcessState


def _records(count: int) -> list[ProcessRecord]:
    return [
        ProcessRecord(
            "many",
            f"import-file:{n}",
            name=f"Import file {n}",
            detail_level=1 + n % 4,
            warning="big" if n % 7 == 0 else "",
            state=ProcessState.FAILED if n % 3 else ProcessState.DONE,
            error="RuntimeError: the file was empty\nand more" if n % 3 else "",
            progress=Progress(f"row {n}", (n % 100) / 100),
        )
        for n in range(count)
    ]


def test_ps_renders_10000_records_in_well_under_two_seconds_of_cpu() -> None:
    records = _records(10_000)
    out = io.StringIO()
    console = Console(file=out, width=150, highlight=False)
    started = time.process_time()
    _print_table(console, records, "scope many")
    spent = time.process_time() - started
    lines = out.getvalue().splitlines()
    assert spent < 2.0, f"{spent:.2f} s of CPU"
    rows = [line for line in lines if line.startswith("│ ")]
    assert len(rows) == 10_000
    first = next(line for line in rows if "import-file:0 " in line)
    assert "Import file 0" in first and "done" in first
    failed = next(line for line in rows if "import-file:1 " in line)
    assert "failed" in failed and "RuntimeError: the file was empty and more" in failed  # one line
    assert lines[0] == "scope many" and "⚠ asks for confirmation before launch" in lines[-1]


def test_a_small_scope_keeps_richs_table() -> None:
    out = io.StringIO()
    _print_table(Console(file=out, width=150, highlight=False), _records(3), "scope few")
    assert "import-file:0" in out.getvalue() and out.getvalue().count("\n") < 20
