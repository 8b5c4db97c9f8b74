"""The worker app the benchmarks run: real process code, run by real workers.

Scope ids say what a scope holds, ``KIND.SIZE.TAG``:

- ``ping.N.TAG``: processes ``p0`` .. ``p{N-1}``; each sends the harness the
  time its code started (a datagram ``start:SCOPE/PROCESS|time_ns``) and ends.
- ``mem.N.TAG``: processes ``m0`` .. ``m{N-1}`` that do nothing (records for
  the memory scenario).
- ``iso.N.TAG``: as ``ping``, each process in an OS process of its own
  (``isolation="process"``); the sink's address comes in the scope data, since
  the code runs in a fork of the fork server, not in the worker.
- ``isostop.N.TAG``: isolated processes ``s0`` .. that send their pid, then ignore
  the stop (SIGTERM ends them, after a stop grace of ``STOP_GRACE_S``).
- ``hz.MS.TAG``: ``rp-cost`` times 1e6 ``report_progress`` calls and sends the
  figure, ``log-cost`` the same of ``context.log``, ``log-burst`` logs 100,000
  lines at once (timed), ``cpu-twin`` does the same work with nothing shipped
  (its twin for the CPU it takes); ``hz200`` reports progress
  200 times a second for MS milliseconds, each message carrying its sequence
  number and the report time.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from typing import Any

from bench import probe
from shards_worker import ProcessContext, ProcessDefinition, WorkerApp

_SINK: tuple[str, int] = ("127.0.0.1", 9)
PROGRESS_CALLS = 1_000_000
PROGRESS_REPEATS = 5
HZ_INTERVAL_NS = 5_000_000  # 200 reports per second


def start_tag(scope_id: str, process_id: str) -> str:
    return f"start:{scope_id}/{process_id}"


def _ping(context: ProcessContext) -> None:
    probe.send(_SINK, start_tag(context.scope_id, context.process_id), time.time_ns())


def _ping_isolated(context: ProcessContext) -> None:
    probe.send(context.scope_data[2], start_tag(context.scope_id, context.process_id), time.time_ns())


STOP_GRACE_S = 1.0


def _ignore_stop(context: ProcessContext) -> None:
    probe.send(context.scope_data[2], f"pid:{context.scope_id}/{context.process_id}", os.getpid())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.005)


def _noop(context: ProcessContext) -> None:
    return None


def _progress_cost(context: ProcessContext) -> None:
    """Time ``report_progress`` in a tight loop, and the bare loop, inside a real run."""
    report = context.report_progress
    calls = range(PROGRESS_CALLS)
    per_call: list[float] = []
    loop_only: list[float] = []
    for _ in range(PROGRESS_REPEATS):
        started = time.perf_counter_ns()
        for _ in calls:
            report("working", 0.5)
        middle = time.perf_counter_ns()
        for _ in calls:
            pass
        ended = time.perf_counter_ns()
        per_call.append((middle - started) / PROGRESS_CALLS)
        loop_only.append((ended - middle) / PROGRESS_CALLS)
    # A varying message and rate, as real code would report.
    started = time.perf_counter_ns()
    for n in calls:
        report("step", n / PROGRESS_CALLS)
    varying = (time.perf_counter_ns() - started) / PROGRESS_CALLS
    probe.send(
        _SINK,
        f"rp-cost:{context.scope_id}",
        ",".join(f"{v:.1f}" for v in per_call),
        ",".join(f"{v:.1f}" for v in loop_only),
        f"{varying:.1f}",
    )


LOG_CALLS = 1_000_000


def _log_cost(context: ProcessContext) -> None:
    """Time ``context.log`` in a tight loop, and the bare loop, inside a real run (ns per call)."""
    log = context.log
    calls = range(LOG_CALLS)
    per_call: list[float] = []
    loop_only: list[float] = []
    for _ in range(PROGRESS_REPEATS):
        started = time.perf_counter_ns()
        for _ in calls:
            log("a line of the run's own, of a usual length")
        middle = time.perf_counter_ns()
        for _ in calls:
            pass
        ended = time.perf_counter_ns()
        per_call.append((middle - started) / LOG_CALLS)
        loop_only.append((ended - middle) / LOG_CALLS)
    probe.send(
        _SINK,
        f"log-cost:{context.scope_id}",
        ",".join(f"{v:.1f}" for v in per_call),
        ",".join(f"{v:.1f}" for v in loop_only),
    )


BURST_LINES = 100_000


def burst_line(n: int) -> str:
    return f"line {n:06d} of a burst, of a usual length"


class _TailOnly:
    """``context.log`` as it was when a run kept only a tail: a bounded deque, nothing shipped whole."""

    def __init__(self) -> None:
        self._logs: collections.deque[str] = collections.deque(maxlen=1000)

    def log(self, line: str) -> None:
        self._logs.append(line)


def _log_burst(context: ProcessContext, *, whole: bool = True) -> None:
    """100,000 ``context.log`` calls as fast as they go (whole run logs: every line is stored), timed,
    and the same loop on ``_TailOnly.log`` (what ``context.log`` was before), for comparison.
    Not ``whole``: both loops on ``_TailOnly.log``, the same CPU with no line shipped."""
    log = context.log if whole else _TailOnly().log
    lines = [burst_line(n) for n in range(BURST_LINES)]
    baseline = _TailOnly().log
    begun = time.time_ns()
    started = time.perf_counter_ns()
    for text in lines:
        log(text)
    middle = time.perf_counter_ns()
    for text in lines:
        baseline(text)
    ended = time.perf_counter_ns()
    probe.send(_SINK, f"log-burst:{context.scope_id}", begun, middle - started, ended - middle)


def _hz200(context: ProcessContext) -> None:
    """Report progress every 5 ms for the scope's MS milliseconds; messages are ``SEQ TIME_NS``."""
    duration_ns = int(context.scope_id.split(".")[1]) * 1_000_000
    begun = time.time_ns()
    probe.send(_SINK, f"hz-start:{context.scope_id}", begun)
    seq = 0
    while context.should_continue():
        due = begun + seq * HZ_INTERVAL_NS
        now = time.time_ns()
        if now < due:
            time.sleep((due - now) / 1e9)
            now = time.time_ns()
        if now - begun >= duration_ns:
            break
        context.report_progress(f"{seq} {now}", min(1.0, (now - begun) / duration_ns))
        seq += 1
    probe.send(_SINK, f"hz-end:{context.scope_id}", time.time_ns(), seq)


@functools.lru_cache(maxsize=64)
def _definitions(kind: str, size: int) -> tuple[ProcessDefinition, ...]:
    if kind == "ping":
        return tuple(ProcessDefinition(f"p{n}", _ping) for n in range(size))
    if kind == "iso":
        return tuple(ProcessDefinition(f"p{n}", _ping_isolated, isolation="process") for n in range(size))
    if kind == "isostop":
        return tuple(
            ProcessDefinition(f"s{n}", _ignore_stop, isolation="process", stop_grace_s=STOP_GRACE_S)
            for n in range(size)
        )
    if kind == "mem":
        return tuple(ProcessDefinition(f"m{n}", _noop, name=f"Record {n}") for n in range(size))
    if kind == "hz":
        return (
            ProcessDefinition("rp-cost", _progress_cost, name="report_progress cost"),
            ProcessDefinition("hz200", _hz200, name="Progress at 200 Hz"),
            ProcessDefinition("log-cost", _log_cost, name="context.log cost"),
            ProcessDefinition("log-burst", _log_burst, name="100,000 log lines at once"),
            ProcessDefinition(
                "cpu-twin", functools.partial(_log_burst, whole=False), name="The burst's CPU, no lines"
            ),
        )
    return ()


def _scope_data(scope_id: str) -> tuple[str, int, tuple[str, int]]:
    kind, _, rest = scope_id.partition(".")
    size = rest.partition(".")[0]
    return kind, int(size) if size.isdigit() else 0, _SINK


def _process_list(scope_data: Any) -> tuple[ProcessDefinition, ...]:
    kind, size, _ = scope_data
    return _definitions(kind, size)


def make_app(sink: str) -> WorkerApp:
    """The benchmark app; process code reports to the harness's datagram sink at ``sink``."""
    global _SINK
    _SINK = probe.parse_address(sink)
    return WorkerApp(get_process_list=_process_list, get_scope_data=_scope_data)
