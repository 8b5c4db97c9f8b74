"""The leader's active runs in memory, and what it knows of each beyond its stored state.

Memory only: who is the child of whom, which idempotency key is whose, when a
worker confirmed a run, the tail of its log, who waits for its end. A run is
tracked from its launch (or its take-over) until its end is committed, then
forgotten: an ended run is read from the store.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace

from shards import validation as v
from shards.models import Run

LOG_TAIL_LINES = v.LOG_TAIL_LINES
MAX_LOG_LINE_LENGTH = 4096


class ActiveRuns:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.runs: dict[str, Run] = {}  # active runs
        self.children: dict[str, set[str]] = {}  # parent run id -> active child run ids
        # Parent run id -> the (scope, process) of its children between attempts (a retry
        # planned): a parent's stop cancels those too. Checked against the record when used.
        self.retrying_children: dict[str, set[tuple[str, str]]] = {}
        self.idempotency: dict[str, str] = {}  # key -> run id
        self.preferred: dict[str, str] = {}  # run id -> preferred worker id
        self.acked_at: dict[str, float] = {}  # run id -> when its worker confirmed it (monotonic)
        # Run id -> its worker's count of runs received once it had this one: a
        # heartbeat counting as many was made after the worker listed the run.
        self.acked_seq: dict[str, int] = {}
        # Runs a predecessor handed to a worker: not yet confirmed by that worker to us.
        self.restored: set[str] = set()
        self.log_tails: dict[str, deque[str]] = {}
        self.waiters: dict[str, list[asyncio.Future[Run]]] = {}

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def track(self, run: Run) -> None:
        self.runs[run.run_id] = run
        if run.idempotency_key:
            self.idempotency[run.idempotency_key] = run.run_id
        if run.parent_run_id:
            self.children.setdefault(run.parent_run_id, set()).add(run.run_id)

    def forget(self, run: Run) -> None:
        self.runs.pop(run.run_id, None)
        self.preferred.pop(run.run_id, None)
        self.acked_at.pop(run.run_id, None)
        self.acked_seq.pop(run.run_id, None)
        self.restored.discard(run.run_id)
        self.log_tails.pop(run.run_id, None)
        if run.idempotency_key and self.idempotency.get(run.idempotency_key) == run.run_id:
            # Memory holds the keys of active runs only; an ended run's key is
            # found in the store (its unique index), so memory stays bounded.
            del self.idempotency[run.idempotency_key]
        children = self.children.get(run.parent_run_id)
        if children is not None:
            children.discard(run.run_id)
            if not children:
                del self.children[run.parent_run_id]
        self.children.pop(run.run_id, None)
        self.retrying_children.pop(run.run_id, None)

    def append_logs(self, run_id: str, lines: Iterable[str]) -> None:
        tail = self.log_tails.get(run_id)
        for line in list(lines)[-LOG_TAIL_LINES:]:  # only the newest can stay in the tail
            if tail is None:
                tail = self.log_tails[run_id] = deque(maxlen=LOG_TAIL_LINES)
            tail.append(line[:MAX_LOG_LINE_LENGTH])

    def replace_logs(self, run_id: str, lines: Iterable[str]) -> None:
        """The run's whole tail, as its worker kept it (after a restart, or at its end)."""
        tail = self.log_tails[run_id] = deque(maxlen=LOG_TAIL_LINES)
        tail.extend(line[:MAX_LOG_LINE_LENGTH] for line in lines)

    def view(self, run: Run) -> Run:
        """``run`` with the tail of its log (kept apart while it runs)."""
        tail = self.log_tails.get(run.run_id)
        return replace(run, log_tail=tuple(tail)) if tail else run

    async def wait_for_end(self, run_id: str) -> Run:
        waiter: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(run_id, []).append(waiter)
        try:
            return await waiter
        finally:
            waiters = self.waiters.get(run_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self.waiters[run_id]

    def ended(self, run: Run) -> None:
        """Wake those waiting for the end of ``run``."""
        for waiter in self.waiters.pop(run.run_id, []):
            if not waiter.done():
                waiter.set_result(run)

    def fail_waiters(self, error: Callable[[], BaseException]) -> None:
        """Those waiting for an end will not hear of it here: each gets ``error()``."""
        for waiters in self.waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error())
