"""The Shards scenarios: each runs against a ``Stack`` (a controller subprocess on one store,
its worker subprocesses, and a client in the harness) and returns plain data for the report.

Times are ``time.time_ns()`` taken in the harness (before a call is sent) and
in the process code (when it starts, sent back as a datagram): one clock, one
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import probe, stats
from bench.apps import HZ_INTERVAL_NS, start_tag
from bench.services import Service, Services, cpu_of_commands
from shards import AsyncClient, ProcessState, WatchEventType


@dataclass
class Settings:
    """How much each scenario does (``--quick`` makes a smaller one)."""

    reps: int = 5
    latency_launches: int = 200
    throughput_launches: int = 2000
    # FerretDB's SQLite backend scans a whole collection for every fenced
    # upsert (see the README), so every write slows down as runs accumulate:
    # the MongoDB side makes fewer launches, to stay within the time budget.
    mongodb_latency_launches: int = 40
    mongodb_throughput_launches: int = 100
    # FerretDB's SQLite backend still scans ``records`` for every update of a stored record
    # (37 ms at 4,000 documents): 2,000 launches took it minutes to write behind, and the
    # repetitions after it waited for that.
    sqlite_throughput_launches: int = 500
    # Fewer watchers first, to show where this machine's two cores run out.
    watch_sweep: tuple[int, ...] = (100, 300)
    throughput_concurrency: int = 64
    workers: int = 2
    capacity: int = 16
    progress_watchers: int = 1000
    progress_seconds: float = 10.0
    memory_records: int = 100_000
    memory_watchers: int = 1000
    failover_reps: int = 5

    def launches(self, kind: str, scenario: str) -> int:
        if scenario == "latency":
            return self.mongodb_latency_launches if kind == "mongodb" else self.latency_launches
        if kind == "mongodb-sqlite":
            return min(self.sqlite_throughput_launches, self.throughput_launches)
        return self.mongodb_throughput_launches if kind == "mongodb" else self.throughput_launches

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            reps=2,
            latency_launches=50,
            throughput_launches=500,
            mongodb_latency_launches=20,
            mongodb_throughput_launches=50,
            watch_sweep=(),
            progress_watchers=200,
            progress_seconds=3.0,
            memory_records=10_000,
            memory_watchers=200,
            failover_reps=2,
        )


@dataclass
class Bench:
    services: Services
    sink: probe.Sink
    settings: Settings
    mongodb_uri: str = ""  # the FerretDB server, '' when there is none
    log: Callable[[str], None] = print
    # More MongoDB servers by kind ("mongodb-sqlite": FerretDB on SQLite), beside ``mongodb_uri``.
    mongodb_uris: dict[str, str] = field(default_factory=dict)

    def store_uri(self, kind: str, name: str) -> str:
        if kind == "memory":  # the product's own ceiling: a store that costs next to nothing
            return ":memory:"
        server = self.mongodb_uris.get(kind) or (self.mongodb_uri if kind == "mongodb" else "")
        if server:
            return f"{server.rstrip('/')}/bench_{name}_{uuid.uuid4().hex[:8]}"
        return str(self.services.workdir / f"{name}-{uuid.uuid4().hex[:8]}.db")


@dataclass
class Stack:
    """A controller on one store, its workers, and a client."""

    kind: str
    controller: Service
    workers: list[Service]
    client: AsyncClient
    extra: list[Service] = field(default_factory=list)

    @property
    def processes(self) -> list[Service]:
        return [self.controller, *self.workers, *self.extra]


@contextlib.asynccontextmanager
async def stack(
    bench: Bench,
    kind: str,
    name: str,
    *,
    workers: int | None = None,
    capacity: int | None = None,
    store: str = "",
) -> AsyncIterator[Stack]:
    services = bench.services
    store = store or bench.store_uri(kind, name)
    # Loading 100,000 records from FerretDB takes a while.
    controller = await services.start_controller(
        store, name=f"{name}-{kind}-controller", timeout_s=300.0 if kind.startswith("mongodb") else 30.0
    )
    started = [controller]
    try:
        worker_services = await services.start_workers(
            [controller.address],
            bench.settings.workers if workers is None else workers,
            bench.settings.capacity if capacity is None else capacity,
            bench.sink.address,
            prefix=f"{name}-{kind}-worker",
        )
        started += worker_services
        async with AsyncClient(controller.address, timeout_s=120.0) as client:
            yield Stack(kind, controller, worker_services, client)
    finally:
        for service in reversed(started):
            services.stop(service)


def cpu_since(target: Stack, before: list[float]) -> list[float]:
    """CPU seconds each of the stack's processes used since ``before`` was read."""
    return [s.cpu_seconds() - b for s, b in zip(target.processes, before, strict=True)]


# gRPC queues the calls of a channel beyond 100 concurrent streams on its one
# HTTP/2 connection (the limit the server announces): a client holding 100
# open watches would wait forever for its 101st. So watches are spread over
# clients (each has a channel of its own), this many per client.
WATCHES_PER_CLIENT = 90


@contextlib.asynccontextmanager
async def client_pool(address: str, watches: int) -> AsyncIterator[list[AsyncClient]]:
    clients = [AsyncClient(address, timeout_s=30.0) for _ in range(-(-watches // WATCHES_PER_CLIENT))]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


# ---------------------------------------------------------------- launch latency


class RunningWatcher:
    """A watch on a scope that notes when each process is first seen ``running``, and ended."""

    def __init__(self, client: AsyncClient, scope_id: str) -> None:
        self._client = client
        self._scope_id = scope_id
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._ending: dict[str, asyncio.Future[int]] = {}
        self.synced = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    def expect(self, process_id: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[process_id] = future
        return future

    def expect_end(self, process_id: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._ending[process_id] = future
        return future

    async def _watch(self) -> None:
        async for event in self._client.watch_processes(self._scope_id):
            if event.type is WatchEventType.SYNCED:
                self.synced.set()
            elif event.type is WatchEventType.CHANGED and event.process is not None:
                seen, state = time.time_ns(), event.process.state
                if state is ProcessState.RUNNING:
                    waiting = self._waiting
                elif state.is_end:
                    waiting = self._ending
                else:
                    continue
                future = waiting.pop(event.process.process_id, None)
                if future is not None and not future.done():
                    future.set_result(seen)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class LatencyProbe:
    """Launches one at a time in a scope of its own; one ``rep`` is ``count`` launches."""

    def __init__(self, bench: Bench, target: Stack, total: int) -> None:
        self.bench = bench
        self.target = target
        self.scope_id = f"ping.{total}.lat{uuid.uuid4().hex[:6]}"
        self._next = 0

    async def open(self, warmup: int = 20, *, define: bool = True) -> None:
        """Define the scope (unless the caller did), watch it, and launch ``warmup`` times."""
        if define:
            await self.target.client.define_processes(self.scope_id)
        self.watcher = RunningWatcher(self.target.client, self.scope_id)
        await asyncio.wait_for(self.watcher.synced.wait(), 10)
        await self.rep(warmup)

    async def rep(self, count: int) -> dict[str, list[float]]:
        client, sink = self.target.client, self.bench.sink
        started: list[float] = []
        watched: list[float] = []
        acked: list[float] = []
        ended: list[float] = []
        for _ in range(count):
            process_id = f"p{self._next}"
            self._next += 1
            code_started = sink.expect(start_tag(self.scope_id, process_id))
            seen_running = self.watcher.expect(process_id)
            seen_ended = self.watcher.expect_end(process_id)
            sent = time.time_ns()
            await client.launch_process(self.scope_id, process_id)
            acked.append((time.time_ns() - sent) / 1e6)
            fields = await asyncio.wait_for(code_started, 10)
            seen = await asyncio.wait_for(seen_running, 10)
            started.append((int(fields[0]) - sent) / 1e6)
            watched.append((seen - sent) / 1e6)
            # One at a time means one at a time: the next launch once this run's end is stored
            # (a fixed 2 ms pause sent it while the end was still being written, on a store
            # whose write takes longer than that).
            # The code returns at once: from its start to its end stored and seen is the end's path.
            ended.append((await asyncio.wait_for(seen_ended, 10) - int(fields[0])) / 1e6)
        return {"start_ms": started, "watch_running_ms": watched, "ack_ms": acked, "end_seen_ms": ended}

    async def close(self) -> None:
        await self.watcher.close()


# ---------------------------------------------------------------- sustained launches

STORE_SERVERS = ("ferretdb", "postgres")
_IDLE_CORES = 0.05


async def store_servers_idle(most_s: float = 60.0) -> float:
    """Wait (at most ``most_s``) until no FerretDB or PostgreSQL uses more than a twentieth of a
    core: what an earlier repetition wrote behind, on any store, must not run in this one's
    time. The seconds waited."""
    began = time.monotonic()
    before = cpu_of_commands(STORE_SERVERS)
    while time.monotonic() - began < most_s:
        await asyncio.sleep(0.25)
        now = cpu_of_commands(STORE_SERVERS)
        if now - before < _IDLE_CORES * 0.25:
            break
        before = now
    return time.monotonic() - began


async def throughput_rep(bench: Bench, target: Stack, count: int, concurrency: int) -> dict[str, float]:
    """``count`` launches of distinct processes, ``concurrency`` in flight; launches per second."""
    scope_id = f"ping.{count}.tput{uuid.uuid4().hex[:6]}"
    client, sink = target.client, bench.sink
    await client.define_processes(scope_id)
    waited_s = await store_servers_idle()
    futures = [sink.expect(start_tag(scope_id, f"p{n}")) for n in range(count)]
    pending = iter(range(count))
    cpu_before = [s.cpu_seconds() for s in target.processes]
    harness_before = time.process_time()
    store_before = cpu_of_commands(STORE_SERVERS)

    async def launcher() -> None:
        for n in pending:
            await client.launch_process(scope_id, f"p{n}")

    first = time.time_ns()
    await asyncio.gather(*(launcher() for _ in range(concurrency)))
    accepted = time.time_ns()
    starts = await asyncio.wait_for(asyncio.gather(*futures), timeout=300)
    last_start = max(int(fields[0]) for fields in starts)
    elapsed_s = (last_start - first) / 1e9
    cpu = cpu_since(target, cpu_before)
    return {
        "count": count,
        "started_per_s": count / elapsed_s,
        "accepted_per_s": count / ((accepted - first) / 1e9),
        "seconds": elapsed_s,
        "controller_cpu": cpu[0] / elapsed_s,
        "workers_cpu": sum(cpu[1:]) / elapsed_s,
        "harness_cpu": (time.process_time() - harness_before) / elapsed_s,
        # Every FerretDB's and PostgreSQL's (near nothing when the stack's store is another).
        "store_servers_cpu": (cpu_of_commands(STORE_SERVERS) - store_before) / elapsed_s,
        "waited_for_idle_store_servers_s": waited_s,
    }


# ---------------------------------------------------------------- report_progress cost


async def progress_cost(bench: Bench, target: Stack) -> dict[str, Any]:
    """``report_progress`` timed inside a real run on a real worker; ns per call."""
    scope_id = f"hz.0.cost{uuid.uuid4().hex[:6]}"
    result = bench.sink.expect(f"rp-cost:{scope_id}")
    await target.client.launch_process(scope_id, "rp-cost")
    per_call, loop_only, varying = await asyncio.wait_for(result, 120)
    calls = [float(v) for v in per_call.split(",")]
    loops = [float(v) for v in loop_only.split(",")]
    return {
        "ns_per_call": stats.median(calls),
        "ns_per_call_minus_loop": stats.median([c - lo for c, lo in zip(calls, loops, strict=True)]),
        "loop_ns": stats.median(loops),
        "varying_args_ns_per_call": float(varying),
        "repeats": calls,
    }


# ---------------------------------------------------------------- watch lag


class LagWatchers:
    """``count`` watch streams on one scope (one client, one channel) that time every progress update.

    A message is ``SEQ TIME_NS`` (sequence number and report time). Two lags:
    ``delivered``: receipt - report time of the value received; ``staleness``:
    for every report, including those coalesced away, the time until a
    watcher saw it or a newer one (reports are 5 ms apart, so the report time
    of a skipped one is that of the received one less 5 ms per step).
    """

    def __init__(self, clients: list[AsyncClient], scope_id: str, count: int) -> None:
        self.delivered = stats.Histogram()
        self.staleness = stats.Histogram()
        self.messages = 0
        self.synced = 0
        self.all_synced = asyncio.Event()
        self._count = count
        self._tasks = [
            asyncio.create_task(self._watch(clients[n // WATCHES_PER_CLIENT], scope_id)) for n in range(count)
        ]

    async def _watch(self, client: AsyncClient, scope_id: str) -> None:
        last_seq = -1
        async for event in client.watch_processes(scope_id, name_contains="hz200"):
            if event.type is WatchEventType.SYNCED:
                self.synced += 1
                if self.synced == self._count:
                    self.all_synced.set()
                continue
            record = event.process
            if record is None or not record.progress.message:
                continue
            seq_text, _, sent_text = record.progress.message.partition(" ")
            seq, sent = int(seq_text), int(sent_text)
            received = time.time_ns()
            self.messages += 1
            self.delivered.add((received - sent) / 1e6)
            for k in range(max(last_seq + 1, seq - 400), seq + 1):
                self.staleness.add((received - sent + (seq - k) * HZ_INTERVAL_NS) / 1e6)
            last_seq = seq

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def watch_lag(bench: Bench, target: Stack, watchers: int, seconds: float) -> dict[str, Any]:
    """``watchers`` watchers of one process that reports progress 200 times a second."""
    duration_ms = int(seconds * 1000)
    scope_id = f"hz.{duration_ms}.lag{uuid.uuid4().hex[:6]}"
    client = target.client
    await client.define_processes(scope_id)
    async with client_pool(target.controller.address, watchers) as clients:
        return await _watch_lag(bench, target, clients, scope_id, watchers, seconds)


async def _watch_lag(
    bench: Bench, target: Stack, clients: list[AsyncClient], scope_id: str, watchers: int, seconds: float
) -> dict[str, Any]:
    client = target.client
    opened = time.monotonic()
    farm = LagWatchers(clients, scope_id, watchers)
    try:
        await asyncio.wait_for(farm.all_synced.wait(), 120)
        open_s = time.monotonic() - opened
        began = bench.sink.expect(f"hz-start:{scope_id}")
        ended = bench.sink.expect(f"hz-end:{scope_id}")
        cpu_before = [s.cpu_seconds() for s in target.processes]
        harness_before = time.process_time()
        wall_before = time.monotonic()
        await client.launch_process(scope_id, "hz200")
        await asyncio.wait_for(began, 30)
        end_fields = await asyncio.wait_for(ended, seconds + 60)
        await asyncio.sleep(0.5)  # the last updates in flight
        wall = time.monotonic() - wall_before
        cpu = cpu_since(target, cpu_before)
        harness_cpu = time.process_time() - harness_before
    finally:
        await farm.close()
    reports = int(end_fields[1])
    return {
        "watchers": watchers,
        "reports": reports,
        "reports_per_s": reports / seconds,
        "open_watchers_s": open_s,
        "messages_per_watcher_per_s": farm.messages / watchers / seconds,
        "delivered_lag_ms": farm.delivered.summary(),
        "staleness_ms": farm.staleness.summary(),
        "cpu_share": {
            "controller": cpu[0] / wall,
            "workers": sum(cpu[1:]) / wall,
            "harness (watchers)": harness_cpu / wall,
        },
    }
