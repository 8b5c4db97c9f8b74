"""``python -m bench.floor [--quick]``: what the parts of a launch cost on this machine, measured alone.

A launch, until its code starts, is at least: one message client -> controller
and one controller -> worker on their long-lived streams (together, about one
stream round trip), one SQLite commit (the run's record) and one hop onto the
worker's thread pool. Each is measured here with nothing of the product around
it, so that the sum says how much of a target is left for the product's own
work, and what no Python implementation of it can beat on this machine:

- a ``grpc.aio`` unary echo of an empty message between two processes on
  loopback (the server is ``python -m bench.floor serve``, a generic handler
  with bytes in and out: no proto, no interceptors), one call at a time; then
  64 calls in flight, with the server's CPU per call (``/proc/PID/stat``);
- the same over one long-lived bidirectional stream: one message at a time,
  then the client writing as fast as it can;
- one SQLite commit of a ~500-byte row (WAL, ``synchronous=NORMAL``,
  ``BEGIN IMMEDIATE`` as the embedded store does);
- ``loop.run_in_executor`` of a no-op on a ``ThreadPoolExecutor``, and back.

Every figure is taken ``reps`` times, the measurements interleaved (rep 1 of
each, then rep 2, ...) so that a noisy second of the machine hits all alike;
the figures are the medians of the reps' p50 and p99. About 25 s (``--quick``:
about 8 s). The server subprocess is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from bench import report, stats
from bench.services import Service, Services, StartError, free_port

SERVICE = "bench.floor.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
END = b"end"  # the last message of a throughput rep on the stream (the others are empty)
ROW_BYTES = 500
STREAM_UNANSWERED = 1000  # messages the stream throughput rep lets go unanswered (see there)

# As the product's channels (``shards._grpc.channel``): a connection of the
# channel's own, closed with it, not one from gRPC's process-wide pool.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

# The worker's pool (``shards_worker.runner``): max(32, capacity x 4), capacity 16.
HOP_THREADS = 64

# The launch path crosses two processes on long-lived streams (the client's
# LaunchProcesses, the controller's ExecuteProcess to the worker): two one-way
# messages, i.e. one stream round trip.
LAUNCH_FLOOR_FORMULA = (
    "1 stream round trip (= one message client->controller + one controller->worker)"
    " + 1 SQLite commit + 1 thread hop"
)


@dataclass
class FloorSettings:
    """How much the floor measures (``--quick`` makes a smaller one)."""

    reps: int = 5
    warmup: int = 200  # calls, messages, commits and hops before the first rep
    calls: int = 300  # one-at-a-time unary calls and stream messages per rep
    commits: int = 500
    hops: int = 2000
    in_flight: int = 64
    window_s: float = 2.0  # each throughput rep

    @classmethod
    def quick(cls) -> FloorSettings:
        return cls(reps=2, warmup=100, calls=200, commits=200, hops=500, window_s=1.0)


Unary: TypeAlias = "grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]"
Log = Callable[[str], None]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the server subprocess


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _echo_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


async def serve(listen: str) -> None:
    """The echo server: no serializers (bytes in, bytes out), nothing but gRPC's own machinery."""
    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_echo),
        "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)


async def start_server(services: Services) -> Service:
    """The echo server as a subprocess (its own GIL); returns once it answers."""
    address = f"127.0.0.1:{free_port()}"
    service = services.spawn(
        "floor-echo", [sys.executable, "-m", "bench.floor", "serve", "--listen", address]
    )
    service.address = address
    deadline = time.monotonic() + 30.0
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        echo = channel.unary_unary(UNARY, None, None)
        while True:
            if not service.alive():
                raise StartError(f"{service.name} exited:\n{service.log_tail()}")
            try:
                await echo(b"", timeout=1.0)
                return service
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise StartError(
                        f"{service.name} did not answer in 30 s:\n{service.log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)


# ---------------------------------------------------------------- gRPC unary


async def unary_latency(echo: Unary, count: int) -> list[float]:
    """``count`` calls, one at a time; each round trip in ms."""
    samples = []
    for _ in range(count):
        began = time.perf_counter_ns()
        await echo(b"")
        samples.append((time.perf_counter_ns() - began) / 1e6)
    return samples


async def unary_throughput(echo: Unary, server: Service, in_flight: int, window_s: float) -> dict[str, float]:
    """``in_flight`` callers for ``window_s``; calls/s and CPU per call on each side.

    The server's CPU is read from ``/proc/PID/stat`` (10 ms ticks: over 2 s, about 1%).
    """
    done = 0
    deadline = time.perf_counter() + window_s

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await echo(b"")
            done += 1

    server_before, client_before, began = server.cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    elapsed = time.perf_counter() - began
    server_cpu, client_cpu = server.cpu_seconds() - server_before, time.process_time() - client_before
    return _rates("call", done, elapsed, server_cpu, client_cpu)


def _rates(item: str, count: int, elapsed: float, server_cpu: float, client_cpu: float) -> dict[str, float]:
    """``count`` items (calls, messages) in ``elapsed`` s: their rate, and each side's CPU per item."""
    return {
        f"{item}s": count,
        f"{item}s_per_s": count / elapsed,
        f"server_cpu_us_per_{item}": server_cpu / count * 1e6,
        f"client_cpu_us_per_{item}": client_cpu / count * 1e6,
        "server_cpu_share": server_cpu / elapsed,
        "client_cpu_share": client_cpu / elapsed,
    }


# ---------------------------------------------------------------- gRPC bidirectional stream


class EchoStream:
    """One long-lived bidirectional stream to the echo server, for every rep."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(STREAM, None, None)(None)

    async def read(self) -> bytes:
        message = await self.call.read()
        if not isinstance(message, bytes):
            raise RuntimeError("the echo stream ended")
        return message

    async def latency(self, count: int) -> list[float]:
        """``count`` messages, one at a time (write, then read its echo); each round trip in ms."""
        samples = []
        for _ in range(count):
            began = time.perf_counter_ns()
            await self.call.write(b"")
            await self.read()
            samples.append((time.perf_counter_ns() - began) / 1e6)
        return samples

    async def throughput(self, server: Service, window_s: float) -> dict[str, float]:
        """The client writes as fast as gRPC lets it for ``window_s``, then ``END``; echoes per second.

        The rate is the echoes received over first write -> last echo, so
        what is still queued when the writing stops counts at its real cost.
        At most ``STREAM_UNANSWERED`` messages are unanswered: enough to keep
        the pipe full, and unbounded the writer runs seconds ahead of the echoes.
        """
        received = 0
        last = 0.0
        answered = asyncio.Event()

        async def reader() -> None:
            nonlocal received, last
            while await self.read() != END:
                received += 1
                last = time.perf_counter()
                answered.set()

        server_before, client_before, began = server.cpu_seconds(), time.process_time(), time.perf_counter()
        reading = asyncio.create_task(reader())
        try:
            sent, deadline = 0, began + window_s
            while time.perf_counter() < deadline:
                while sent - received >= STREAM_UNANSWERED:
                    answered.clear()
                    await answered.wait()
                await self.call.write(b"")
                sent += 1
            await self.call.write(END)
            await asyncio.wait_for(reading, 30.0)
        finally:
            reading.cancel()
        server_cpu, client_cpu = server.cpu_seconds() - server_before, time.process_time() - client_before
        if received != sent:
            raise RuntimeError(f"the echo stream returned {received} of {sent} messages")
        return _rates("message", received, last - began, server_cpu, client_cpu)

    async def close(self) -> None:
        """Ends the stream cleanly (a cancelled one keeps its connection open past the channel's close)."""
        try:
            await self.call.done_writing()
            await asyncio.wait_for(self._until_eof(), 5.0)
        except (grpc.aio.AioRpcError, TimeoutError):
            self.call.cancel()

    async def _until_eof(self) -> None:
        while isinstance(await self.call.read(), bytes):
            pass


# ---------------------------------------------------------------- SQLite and the thread pool


class Commits:
    """A WAL database on a file, set up as the embedded store sets up its own; one row per commit.

    Like the store, no checkpoint runs inside a commit (``wal_autocheckpoint=0``:
    the store checkpoints on a thread), so this is the commit alone.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")

    def latency(self, count: int) -> list[float]:
        """``count`` commits of one ~500-byte row each, one at a time; each in µs."""
        bodies = [os.urandom(ROW_BYTES // 2).hex() for _ in range(count)]
        samples = []
        for body in bodies:
            began = time.perf_counter_ns()
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO runs (body) VALUES (?)", (body,))
            self.db.execute("COMMIT")
            samples.append((time.perf_counter_ns() - began) / 1e3)
        return samples

    def close(self) -> None:
        self.db.close()


def _noop() -> None:
    return None


async def hop_latency(pool: ThreadPoolExecutor, count: int) -> list[float]:
    """``count`` hops loop -> pool thread (a no-op) -> loop, one at a time; each in µs."""
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(count):
        began = time.perf_counter_ns()
        await loop.run_in_executor(pool, _noop)
        samples.append((time.perf_counter_ns() - began) / 1e3)
    return samples


# ---------------------------------------------------------------- the scenario


class Floor:
    """The echo server, a channel and its stream, the database, the pool: what each rep measures."""

    def __init__(
        self, settings: FloorSettings, server: Service, channel: grpc.aio.Channel, workdir: Path
    ) -> None:
        self.settings = settings
        self.server = server
        self.echo: Unary = channel.unary_unary(UNARY, None, None)
        self.stream = EchoStream(channel)
        self.commits = Commits(workdir / "floor.db")
        self.pool = ThreadPoolExecutor(max_workers=HOP_THREADS, thread_name_prefix="floor-hop")
        self.samples: dict[str, list[dict[str, float]]] = {}

    def close(self) -> None:
        self.commits.close()
        self.pool.shutdown(wait=True)

    async def warm_up(self) -> None:
        n = self.settings.warmup
        await unary_latency(self.echo, n)
        await unary_throughput(self.echo, self.server, self.settings.in_flight, 0.25)
        await self.stream.latency(n)
        await self.stream.throughput(self.server, 0.25)
        self.commits.latency(n)
        await hop_latency(self.pool, n)

    def keep(self, figure: str, values: dict[str, float]) -> dict[str, float]:
        self.samples.setdefault(figure, []).append(values)
        return values

    async def rep(self) -> str:
        """One rep of every figure; a line for the log."""
        s = self.settings
        unary = self.keep("unary_ms", stats.summary(await unary_latency(self.echo, s.calls)))
        tput = self.keep(
            "unary_throughput", await unary_throughput(self.echo, self.server, s.in_flight, s.window_s)
        )
        stream = self.keep("stream_ms", stats.summary(await self.stream.latency(s.calls)))
        flow = self.keep("stream_throughput", await self.stream.throughput(self.server, s.window_s))
        commit = self.keep("sqlite_commit_us", stats.summary(self.commits.latency(s.commits)))
        hop = self.keep("thread_hop_us", stats.summary(await hop_latency(self.pool, s.hops)))
        return (
            f"unary {unary['p50']:.3f} ms, {tput['calls_per_s']:,.0f} calls/s "
            f"({tput['server_cpu_us_per_call']:.0f} µs server CPU/call); "
            f"stream {stream['p50']:.3f} ms, {flow['messages_per_s']:,.0f} msg/s "
            f"({flow['server_cpu_us_per_message']:.0f} µs/msg); "
            f"commit {commit['p50']:.0f} µs; hop {hop['p50']:.0f} µs"
        )

    def result(self) -> dict[str, Any]:
        s = self.samples
        latencies = {
            k: stats.medians_of_reps(s[k])
            for k in ("unary_ms", "stream_ms", "sqlite_commit_us", "thread_hop_us")
        }
        floor_ms = (
            latencies["stream_ms"]["p50"]
            + latencies["sqlite_commit_us"]["p50"] / 1e3
            + latencies["thread_hop_us"]["p50"] / 1e3
        )
        return {
            **latencies,
            "unary_throughput": _throughput(s["unary_throughput"], "calls_per_s", "server_cpu_us_per_call"),
            "stream_throughput": _throughput(
                s["stream_throughput"], "messages_per_s", "server_cpu_us_per_message"
            ),
            "launch_floor_ms": floor_ms,
            "launch_floor_formula": LAUNCH_FLOOR_FORMULA + " (sum of p50s)",
            **_ceilings(s["unary_throughput"], s["stream_throughput"]),
            "settings": asdict(self.settings),
        }


def _throughput(reps: list[dict[str, float]], rate: str, server_cpu: str) -> dict[str, Any]:
    """Medians over reps of the rate and of each side's CPU per item."""
    client_cpu = server_cpu.replace("server", "client")
    return {
        rate: stats.median([r[rate] for r in reps]),
        server_cpu: stats.median([r[server_cpu] for r in reps]),
        client_cpu: stats.median([r[client_cpu] for r in reps]),
        "reps": reps,
    }


def _ceilings(unary: list[dict[str, float]], stream: list[dict[str, float]]) -> dict[str, float]:
    """Launches per second if each took its own messages and gRPC were all the product did.

    Medians of the reps' CPU per call. CPU-seconds, not cores: gRPC's C core
    runs partly outside the GIL (the echo server used ~1.1 cores at 64 calls
    in flight here).

    Per run, with nothing shared: the launch one message each way on the
    client's LaunchProcesses stream, the dispatch one message each way on the
    worker's ExecuteProcess stream, the end one FinishRun unary call. That is
    the product at low load. Under load each message carries many launches,
    dispatches or ends, which is how the product goes past this ceiling.
    ``controller``: what the controller alone spends; ``machine``: the
    controller, the worker and the client together, the figure to hold
    against the machine's cores.
    """
    served = stats.median([r["server_cpu_us_per_call"] for r in unary])
    made = stats.median([r["client_cpu_us_per_call"] for r in unary])
    echoed = stats.median([r["server_cpu_us_per_message"] for r in stream])
    echoing = stats.median([r["client_cpu_us_per_message"] for r in stream])
    controller_us = echoed + echoing + served  # launch served, dispatch made, end served
    machine_us = controller_us + echoed + made + echoing  # + worker's dispatch and end, client's launch
    cores = os.cpu_count() or 1
    return {
        "launch_ceiling_controller_per_cpu_s": 1e6 / controller_us,
        "launch_ceiling_machine_per_cpu_s": 1e6 / machine_us,
        "launch_ceiling_machine_per_s": cores * 1e6 / machine_us,
        "cores": cores,
        "grpc_cpu_us_per_run_controller": controller_us,
        "grpc_cpu_us_per_run_machine": machine_us,
    }


async def measure(services: Services, settings: FloorSettings, log: Log = _log) -> dict[str, Any]:
    """Every floor figure; the server subprocess is stopped however this ends."""
    server = await start_server(services)
    try:
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            result = await _measure_on(channel, server, settings, services.workdir, log)
    finally:
        services.stop(server)
    result["in_flight"] = settings.in_flight
    result["window_s"] = settings.window_s
    return result


async def _measure_on(
    channel: grpc.aio.Channel, server: Service, settings: FloorSettings, workdir: Path, log: Log
) -> dict[str, Any]:
    # A function of its own, so that the stream's call is gone before the
    # channel closes: a call still referenced keeps its connection open.
    floor = Floor(settings, server, channel, workdir)
    try:
        await floor.warm_up()
        for rep in range(settings.reps):
            log(f"   rep {rep + 1}/{settings.reps}: {await floor.rep()}")
        return floor.result()
    finally:
        await floor.stream.close()
        floor.close()


# ---------------------------------------------------------------- standalone


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter reps (about 8 s)")
    roles = parser.add_subparsers(dest="role")
    serving = roles.add_parser("serve", help="run the echo server (the harness starts it)")
    serving.add_argument("--listen", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "serve":
        from bench.node import _serve

        _serve(serve(args.listen))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="shards-floor-"))
    services = Services(workdir)
    # SIGTERM ends the run like Ctrl-C does, through the clean-up below: the
    # server is in a session of its own and would outlive us.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    settings = FloorSettings.quick() if args.quick else FloorSettings()
    began = time.monotonic()
    try:
        result = asyncio.run(measure(services, settings))
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    finally:
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(report.floor_text({"floor": result}))
    print(f"\n{time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
