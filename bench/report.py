"""The results table: targets, pass/fail, ratios to Celery; printed, as JSON, and as Markdown."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KINDS = ("embedded", "mongodb")
KIND_TITLES = {"embedded": "embedded", "mongodb": "MongoDB (FerretDB)"}


@dataclass
class Row:
    scenario: str
    figure: str
    target: str
    values: dict[str, float | None]  # embedded, mongodb, celery
    unit: str
    passed: dict[str, bool | None]  # per kind; None when not measured or no target
    ratio: dict[str, float | None]  # ours / Celery, per kind

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figure": self.figure,
            "target": self.target,
            "unit": self.unit,
            "values": self.values,
            "ratio_to_celery": self.ratio,
            "passed": self.passed,
        }


def _get(data: dict[str, Any], *path: str) -> float | None:
    value: Any = data
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, (int, float)) and not math.isnan(value):
        return float(value)
    return None


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    celery = results.get("celery", {})

    def row(
        scenario: str,
        figure: str,
        target: str,
        unit: str,
        path: tuple[str, ...],
        check: Callable[[float, float | None], bool] | None,
        celery_path: tuple[str, ...] | None = None,
        kinds: tuple[str, ...] = KINDS,
    ) -> None:
        celery_value = _get(celery, *celery_path) if celery_path else None
        values: dict[str, float | None] = {"celery": celery_value}
        passed: dict[str, bool | None] = {}
        ratio: dict[str, float | None] = {}
        for kind in KINDS:
            value = _get(results.get(kind, {}), *path) if kind in kinds else None
            values[kind] = value
            passed[kind] = check(value, celery_value) if (check and value is not None) else None
            ratio[kind] = value / celery_value if (value is not None and celery_value) else None
        rows.append(Row(scenario, figure, target, values, unit, passed, ratio))

    row(
        "launch -> process code starts (one at a time)",
        "p50",
        "<= 2 ms and <= 0.8 x Celery",
        "ms",
        ("latency", "start_ms", "p50"),
        lambda v, c: v <= 2.0 and (c is None or v <= 0.8 * c),
        ("latency", "start_ms", "p50"),
    )
    row(
        "launch -> process code starts (one at a time)",
        "p99",
        "<= 8 ms",
        "ms",
        ("latency", "start_ms", "p99"),
        lambda v, c: v <= 8.0,
        ("latency", "start_ms", "p99"),
    )
    row(
        "launch -> a watcher sees running",
        "p50",
        "<= 4 ms",
        "ms",
        ("latency", "watch_running_ms", "p50"),
        lambda v, c: v <= 4.0,
    )
    row(
        "launch -> a watcher sees running",
        "p99",
        "(no target)",
        "ms",
        ("latency", "watch_running_ms", "p99"),
        None,
    )
    row(
        "sustained launches, distinct processes, 1 controller, several workers",
        "launches/s",
        ">= 2,000/s and >= 3 x Celery",
        "/s",
        ("throughput", "started_per_s"),
        lambda v, c: v >= 2000 and (c is None or v >= 3 * c),
        ("throughput", "started_per_s"),
    )
    row(
        "report_progress in a tight loop, in a process",
        "ns per call",
        "<= 1,000 ns",
        "ns",
        ("progress_cost", "ns_per_call"),
        lambda v, c: v <= 1000,
    )
    row(
        "watchers on one controller, 200 progress updates/s",
        "p99 lag report -> watcher",
        "<= 100 ms",
        "ms",
        ("watch_lag", "staleness_ms", "p99"),
        lambda v, c: v <= 100,
    )
    row(
        "controller memory, process records + watchers",
        "RSS",
        "<= 150 MB",
        "MB",
        ("memory", "rss_mb"),
        lambda v, c: v <= 150,
    )
    row(
        "leader kill -9 -> launches accepted again",
        "median s",
        "<= 3 s",
        "s",
        ("failover", "accepted_s", "median"),
        lambda v, c: v <= 3.0,
        kinds=("mongodb",),
    )
    row(
        "leader kill -9 -> launches accepted again",
        "max s",
        "<= 3 s",
        "s",
        ("failover", "accepted_s", "max"),
        lambda v, c: v <= 3.0,
        kinds=("mongodb",),
    )
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    if unit in ("/s", "ns", "MB"):
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[passed]


def _cells(row: Row) -> list[str]:
    ratios = [f"{row.ratio[k]:.2f}x" if row.ratio.get(k) is not None else "-" for k in KINDS]
    return [
        row.scenario,
        row.figure,
        row.target,
        _fmt(row.values.get("embedded"), row.unit),
        _fmt(row.values.get("mongodb"), row.unit),
        _fmt(row.values.get("celery"), row.unit),
        " / ".join(ratios) if any(r != "-" for r in ratios) else "-",
        " / ".join(_verdict(row.passed.get(k)) for k in KINDS),
    ]


HEADERS = [
    "scenario",
    "figure",
    "target",
    "embedded",
    "MongoDB (FerretDB)",
    "Celery+Redis",
    "ratio to Celery (emb / mongo)",
    "pass (emb / mongo)",
]


def text_table(rows: list[Row]) -> str:
    lines = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def floor_text(results: dict[str, Any]) -> str:
    """The cost floor of a launch's parts (``bench/floor.py``), next to what the product measured."""
    floor = results.get("floor")
    if not floor:
        return ""

    def pair(key: str, unit: str) -> str:
        digits = 3 if unit == "ms" else 0
        part = floor.get(key, {})
        return f"{_num(part.get('p50'), digits)} / {_num(part.get('p99'), digits)} {unit}"

    def flow(key: str, rate: str, item: str) -> str:
        part = floor.get(key, {})
        return (
            f"{_num(part.get(rate))} {item}s/s; CPU per {item}: "
            f"server {_num(part.get(f'server_cpu_us_per_{item}'))} µs, "
            f"client {_num(part.get(f'client_cpu_us_per_{item}'))} µs"
        )

    lines = [
        ("gRPC unary round trip, loopback, 2 processes (p50 / p99)", pair("unary_ms", "ms")),
        (
            f"gRPC unary, {floor.get('in_flight', '?')} calls in flight",
            flow("unary_throughput", "calls_per_s", "call"),
        ),
        ("gRPC bidi stream, one message at a time (p50 / p99)", pair("stream_ms", "ms")),
        (
            "gRPC bidi stream, the client writing flat out",
            flow("stream_throughput", "messages_per_s", "message"),
        ),
        ("SQLite commit, one ~500 B row, WAL, sync=NORMAL (p50 / p99)", pair("sqlite_commit_us", "µs")),
        ("thread-pool hop, run_in_executor of a no-op (p50 / p99)", pair("thread_hop_us", "µs")),
    ]
    width = max(len(label) for label, _ in lines)
    reps = floor.get("settings", {}).get("reps", "?")
    embedded = results.get("embedded", {})
    measured = _get(embedded, "latency", "start_ms", "p50")
    launches = _get(embedded, "throughput", "started_per_s")
    out = [f"Cost floor on this machine (bench/floor.py; medians of {reps} reps):"]
    out += [f"  {label.ljust(width)}  {value}" for label, value in lines]
    out += [
        f"  floor of launch -> code starts = {floor.get('launch_floor_formula', '')}",
        f"      = {_num(floor.get('launch_floor_ms'), 2)} ms; target p50 <= 2 ms"
        + (f"; measured p50 (embedded) {measured:.2f} ms" if measured is not None else ""),
        "  launches per CPU-second if each took its own messages and gRPC were all the product did"
        " (target >= 2,000/s"
        + (f"; measured (embedded) {launches:,.0f}/s):" if launches is not None else "):"),
        f"      the controller alone {_num(floor.get('launch_ceiling_controller_per_cpu_s'))}/s "
        f"({_num(floor.get('grpc_cpu_us_per_run_controller'))} µs of gRPC per run); "
        f"controller + worker + client {_num(floor.get('launch_ceiling_machine_per_cpu_s'))}/s "
        f"({_num(floor.get('grpc_cpu_us_per_run_machine'))} µs per run), "
        f"x {floor.get('cores', '?')} cores = {_num(floor.get('launch_ceiling_machine_per_s'))}/s "
        "for the whole machine",
    ]
    out += _ferretdb_lines(
        floor.get("ferretdb"), _get(results.get("mongodb", {}), "latency", "start_ms", "p50")
    )
    return "\n".join(out)


def _ferretdb_lines(ferretdb: dict[str, Any] | None, measured: float | None) -> list[str]:
    """The MongoDB side's floor (``bench/ferretdb_floor.py``): FerretDB's own cost per operation."""
    if not ferretdb:
        return []
    sizes = ferretdb["sizes"]
    head = " / ".join(f"{size:,}" for size in sizes)

    def at_sizes(op: str) -> str:
        return " / ".join(_num(ferretdb.get(f"{op}@{size}"), 1) for size in sizes)

    out = [
        f"  FerretDB (the MongoDB side), one operation at a time, p50 in ms, collections of {head} documents:"
    ]
    for op in ferretdb["operations"]:
        out.append(f"      {op.replace('_', ' ')}: {at_sizes(op)}")
    out.append(
        f"  floor of a launch's store work on MongoDB = {ferretdb['launch_formula'].replace('_', ' ')}"
        f"\n      = {at_sizes('launch_ms')} ms; target p50 <= 2 ms"
        + (f"; measured p50 (MongoDB) {measured:,.0f} ms" if measured is not None else "")
    )
    return out


def machine() -> dict[str, Any]:
    memory_kib = 0
    model = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "note": "shared, noisy machine; every service and the harness share these cores",
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float):
        return None
    return str(value)


def document(results: dict[str, Any], settings: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    rows = build_rows(results)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings,
        "elapsed_s": round(elapsed_s, 1),
        "table": [r.as_dict() for r in rows],
        "results": _clean(results),
    }


def _clean(value: Any) -> Any:
    """NaN and infinity are not JSON: null (and 'never' for an infinite wait)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "never"
        return round(value, 4)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
