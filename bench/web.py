"""The web GUI's benchmarks: ``python -m bench.web [--clients 100,1000] [--seconds 15] [--page-runs 5]``.

1. **SSE fan-out.** A controller and a worker (``bench.web_stack``), ``shards web`` in a
   process of its own, and N lean asyncio SSE readers (raw sockets, no browser) on
   one scope while one process reports progress 200 times a second (``hz200``; each
   message carries its report time). Figures: the staleness of what each reader is
   sent (its arrival time minus the report time of the value it carries), p50/p99;
   the watches of that scope open at the controller (must be 1; the previous run's
   scope keeps its own for the GUI server's ``idle_watch_s``, shown apart as
   ``controller_watches_all_scopes``); the CPU of the GUI server, the controller
   and the readers.
   **The floor** (``floor``; ``--no-floor``: skip): the same readers against
   ``bench.web_floor``, a bare server on the same loop writing events of the same
   size at the same rate to as many sockets. What it measures is what fanning out
   to N sockets and reading them costs on this machine, with nothing else: no
   GUI server can do better here.
2. **10,000 processes.** Time from navigation to the first full table in chromium
   (the page's ``shards:first-table`` mark), median of N page loads.

Readers and the GUI server share this machine, so the readers' own turns count
in the staleness (their CPU is shown): the figure is an upper bound of what a
browser elsewhere sees. Run it on a quiet machine (load average below 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from shards import AsyncClient
from shards._aio import run

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(rb"stack ready: (\S+)")
FLOOR_READY = re.compile(rb"floor ready: (\d+)")
WEB_READY = re.compile(rb"web GUI ready: open http://([\d.]+):(\d+)/")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TICK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Child:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    async def wait_for(self, pattern: re.Pattern[bytes], timeout_s: float = 120.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = pattern.search(self.log_path.read_bytes())
            if found:
                return found
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.process.args!r} did not start: {self.log_path.read_text()[-2000:]}")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


MARKER = b'"message":"'


class SseReader(asyncio.Protocol):
    """A lean SSE client: takes the report time out of each progress it is sent, as it arrives.

    A protocol, not a stream reader: its cost per event is one ``data_received`` and a
    few ``bytes.find`` (a ``readline`` loop cost ~3 times the CPU, taken from the same two
    cores as the GUI server's). The time is taken when the bytes reach this process's loop.
    """

    def __init__(self, samples: list[int], synced: asyncio.Event, request: bytes) -> None:
        self._samples = samples
        self._synced = synced
        self._request = request
        self._rest = b""
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(self._request)  # uvloop's: no subclass of it

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        data = self._rest + data
        end = data.rfind(b"\n\n")  # complete events only; the rest waits for its end
        if end < 0:
            self._rest = data
            return
        complete, self._rest = data[: end + 2], data[end + 2 :]
        if not self._synced.is_set() and b"event: snapshot" in complete:
            self._synced.set()
        at = complete.find(MARKER)
        while at >= 0:
            start = at + len(MARKER)
            close = complete.index(b'"', start)
            _, _, reported = complete[start:close].partition(b" ")
            if reported.isdigit():
                self._samples.append(now - int(reported))
            at = complete.find(MARKER, close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def sse_reader(host: str, port: int, scope: str, samples: list[int], synced: asyncio.Event) -> None:
    """One reader, until cancelled (then it hangs up) or the server hangs up."""
    request = (
        f"GET /api/events?scope={scope} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    for attempt in range(10):
        try:
            transport, reader = await loop.create_connection(
                lambda: SseReader(samples, synced, request), host, port
            )
            break
        except OSError:
            await asyncio.sleep(0.2 * (attempt + 1))  # a full listen queue on a busy machine
    else:
        return
    try:
        await reader.lost
    finally:
        transport.close()


def watches_at_controller(directory: Path, scope: str) -> tuple[int, int]:
    """The watches of ``scope`` and in all at the controller, as bench.web_stack wrote them
    after this call began (a count older than the call could predate a watch just opened)."""
    asked = time.time()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            figures = json.loads((directory / "watches").read_text())
            if figures["at"] > asked:
                return figures["by_scope"].get(scope, 0), figures["total"]
        time.sleep(0.01)
    raise RuntimeError("bench.web_stack stopped writing its watch count")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else float("nan")


async def connect_readers(
    host: str, port: int, scope: str, clients: int, samples: list[int]
) -> list[asyncio.Future[None]]:
    """``clients`` readers, once each has had its snapshot."""
    events = [asyncio.Event() for _ in range(clients)]
    readers: list[asyncio.Future[None]] = []
    for n in range(clients):
        readers.append(asyncio.ensure_future(sse_reader(host, port, scope, samples, events[n])))
        if n % 50 == 49:
            await asyncio.sleep(0.05)  # connect in waves: the listen backlog
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 240)
    return readers


async def hang_up(readers: list[asyncio.Future[None]]) -> None:
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def measure(samples: list[int], seconds: float, servers: dict[str, Child]) -> dict[str, Any]:
    """Staleness over ``seconds``, and the CPU of ``servers`` and of the readers (this process)."""
    samples.clear()
    before = {name: child.cpu_s() for name, child in servers.items()}
    wall_before, readers_before = time.monotonic(), own_cpu_s()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - wall_before
    measured = list(samples)
    figures: dict[str, Any] = {
        "samples": len(measured),
        "staleness_p50_ms": round(percentile(measured, 0.50), 1),
        "staleness_p99_ms": round(percentile(measured, 0.99), 1),
        "staleness_max_ms": round(percentile(measured, 1.0), 1),
    }
    for name, child in servers.items():
        figures[f"{name}_cpu_percent"] = round((child.cpu_s() - before[name]) / wall * 100, 1)
    # the readers take their share of the same two cores
    figures["readers_cpu_percent"] = round((own_cpu_s() - readers_before) / wall * 100, 1)
    return figures


async def fan_out(
    address: str,
    servers: dict[str, Child],
    host: str,
    port: int,
    clients: int,
    seconds: float,
    directory: Path,
) -> dict[str, Any]:
    scope = f"hz.{int(seconds * 1000) + 3000}.fan{clients}"
    async with AsyncClient(address) as client:
        await client.define_processes(scope)
        samples: list[int] = []
        readers = await connect_readers(host, port, scope, clients, samples)
        watches_idle, _ = watches_at_controller(directory, scope)
        launched = await client.launch_process(scope, "hz200")
        await asyncio.sleep(2.0)  # warm-up: the first reports, connections settled
        figures = await measure(samples, seconds, servers)
        watches, watches_total = watches_at_controller(directory, scope)
        with contextlib.suppress(Exception):
            await client.stop_process(scope, "hz200")
        await client.wait_run(launched.run_id, 30)
        await hang_up(readers)
    return {
        "clients": clients,
        "events_per_client_per_s": round(figures["samples"] / clients / seconds, 1),
        **figures,
        "controller_watches": watches,
        "controller_watches_before_launch": watches_idle,
        # every scope's: the previous run's scope is still watched (idle_watch_s, 30 s)
        "controller_watches_all_scopes": watches_total,
    }


async def fan_out_floor(clients: int, seconds: float, hz: float, directory: Path) -> dict[str, Any]:
    """The same readers against bench.web_floor: a bare server writing events of the same
    size at the same rate to as many sockets (what fanning out alone costs here)."""
    floor = Child([sys.executable, "-m", "bench.web_floor", str(hz)], directory / f"floor{clients}.log")
    try:
        port = int((await floor.wait_for(FLOOR_READY)).group(1))
        samples: list[int] = []
        readers = await connect_readers("127.0.0.1", port, "floor", clients, samples)
        await asyncio.sleep(2.0)
        figures = await measure(samples, seconds, {"floor": floor})
        await hang_up(readers)
    finally:
        floor.stop()
    return {
        "clients": clients,
        "events_per_client_per_s": round(figures["samples"] / clients / seconds, 1),
        **figures,
    }


def first_table(url: str, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    times: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector('table.processes[data-ready="1"]', timeout=60_000)
            mark = page.evaluate("performance.getEntriesByName('shards:first-table')[0].startTime")
            rows = page.locator("tr.row").count()
            shown = page.locator(".counts").inner_text()
            times.append(mark)
            context.close()
        browser.close()
    return {
        "runs_ms": [round(t) for t in times],
        "median_ms": round(statistics.median(times)),
        "rendered_rows": rows,
        "shown": shown,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 sockets each side
    results: dict[str, Any] = {"fan_out": [], "floor": [], "page": None}
    with tempfile.TemporaryDirectory(prefix="shards-bench-web-") as workdir:
        directory = Path(workdir)
        stack = Child([sys.executable, "-m", "bench.web_stack", workdir], directory / "stack.log")
        web: Child | None = None
        try:
            address = (await stack.wait_for(READY)).group(1).decode()
            # --profile-gui: the GUI server under cProfile (slower; for where its time goes, not figures)
            profiled = ["-m", "cProfile", "-o", args.profile_gui] if args.profile_gui else []
            web = Child(
                [
                    sys.executable,
                    *profiled,
                    "-m",
                    "shards.cli",
                    "web",
                    "--controller",
                    address,
                    "--listen",
                    "127.0.0.1:0",
                ],
                directory / "web.log",
            )
            found = await web.wait_for(WEB_READY)
            host, port = found.group(1).decode(), int(found.group(2))
            for clients in args.clients:
                log(f"fan-out: {clients} SSE clients, {args.seconds:.0f} s of progress at 200/s ...")
                servers = {"gui": web, "controller": stack}
                figures = await fan_out(address, servers, host, port, clients, args.seconds, directory)
                log(f"  {figures}")
                results["fan_out"].append(figures)
                if args.floor:
                    rate = max(1.0, figures["events_per_client_per_s"])
                    log(f"floor: {clients} SSE clients of a bare server, {rate}/s ...")
                    floor = await fan_out_floor(clients, args.seconds, rate, directory)
                    log(f"  {floor}")
                    results["floor"].append(floor)
            if args.page_runs:
                async with AsyncClient(address, timeout_s=120) as client:
                    await client.define_processes("mem.10000.page")
                url = f"http://{host}:{port}/?scope=mem.10000.page"
                log(f"page: 10,000 processes, first full table, {args.page_runs} loads ...")
                results["page"] = await asyncio.to_thread(first_table, url, args.page_runs)
                log(f"  {results['page']}")
        finally:
            if web is not None:
                web.stop()
            stack.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,1000", help="SSE clients per run (default 100,1000)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run (default 15)")
    parser.add_argument("--page-runs", type=int, default=5, help="page loads of 10,000 processes (0: none)")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the fan-out floor")
    parser.add_argument("--profile-gui", default="", help="run the GUI server under cProfile, stats here")
    parser.add_argument("--out", default="", help="also write the figures here as JSON")
    options = parser.parse_args()
    options.clients = [int(n) for n in options.clients.split(",") if n]
    figures = run(main(options))
    print(json.dumps(figures, indent=2))
    if options.out:
        Path(options.out).write_text(json.dumps(figures, indent=2) + "\n")
