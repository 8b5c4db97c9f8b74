"""The web GUI's benchmarks: ``python -m bench.web [--clients 100,1000] [--seconds 15] [--page-runs 5]``.

1. **SSE fan-out.** A controller and a worker (``bench.web_stack``), ``shards web`` in a
   process of its own, and N lean asyncio SSE readers (raw sockets, no browser) on
   one scope while one process reports progress 200 times a second (``hz200``; each
   message carries its report time). Figures: the staleness of what each reader is
   sent (its arrival time minus the report time of the value it carries), p50/p99;
   the watches of that scope open at the controller (must be 1; the previous run's
   scope keeps its own for the GUI server's ``idle_watch_s``, shown apart as
   ``controller_watches_all_scopes``); the GUI server's CPU.
2. **10,000 processes.** Time from navigation to the first full table in chromium
   (the page's ``shards:first-table`` mark), median of N page loads.

Readers and the GUI server share this machine, so the readers' own turns count
in the staleness: the figure is an upper bound of what a browser elsewhere sees.
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
from typing import Any

from shards import AsyncClient
from shards._aio import run

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(rb"stack ready: (\S+)")
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


async def sse_reader(host: str, port: int, scope: str, samples: list[int], synced: asyncio.Event) -> None:
    """A lean SSE client: reads lines, takes the report time out of each progress it is sent."""
    for attempt in range(10):
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=16 * 1024 * 1024)
            break
        except OSError:
            await asyncio.sleep(0.2 * (attempt + 1))  # a full listen queue on a busy machine
    else:
        return
    writer.write(
        f"GET /api/events?scope={scope} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    try:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        marker = b'"message":"'
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: snapshot"):
                synced.set()
            at = line.find(marker)
            if at < 0 or not line.startswith(b"data: "):
                continue
            start = at + len(marker)
            message = line[start : line.index(b'"', start)]
            _, _, reported = message.partition(b" ")
            if reported.isdigit():
                samples.append(time.time_ns() - int(reported))
    finally:
        writer.close()


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


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else float("nan")


async def fan_out(
    address: str, web: Child, host: str, port: int, clients: int, seconds: float, directory: Path
) -> dict[str, Any]:
    scope = f"hz.{int(seconds * 1000) + 3000}.fan{clients}"
    async with AsyncClient(address) as client:
        await client.define_processes(scope)
        samples: list[int] = []
        events = [asyncio.Event() for _ in range(clients)]
        readers = []
        for n in range(clients):
            readers.append(asyncio.ensure_future(sse_reader(host, port, scope, samples, events[n])))
            if n % 50 == 49:
                await asyncio.sleep(0.05)  # connect in waves: the listen backlog
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 240)
        watches_idle, _ = watches_at_controller(directory, scope)
        launched = await client.launch_process(scope, "hz200")
        await asyncio.sleep(2.0)  # warm-up: the first reports, connections settled
        samples.clear()
        cpu_before, wall_before = web.cpu_s(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = (web.cpu_s() - cpu_before) / (time.monotonic() - wall_before)
        measured = list(samples)
        watches, watches_total = watches_at_controller(directory, scope)
        with contextlib.suppress(Exception):
            await client.stop_process(scope, "hz200")
        await client.wait_run(launched.run_id, 30)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return {
        "clients": clients,
        "samples": len(measured),
        "events_per_client_per_s": round(len(measured) / clients / seconds, 1),
        "staleness_p50_ms": round(percentile(measured, 0.50), 1),
        "staleness_p99_ms": round(percentile(measured, 0.99), 1),
        "staleness_max_ms": round(percentile(measured, 1.0), 1),
        "controller_watches": watches,
        "controller_watches_before_launch": watches_idle,
        # every scope's: the previous run's scope is still watched (idle_watch_s, 30 s)
        "controller_watches_all_scopes": watches_total,
        "gui_cpu_percent": round(cpu * 100, 1),
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
    results: dict[str, Any] = {"fan_out": [], "page": None}
    with tempfile.TemporaryDirectory(prefix="shards-bench-web-") as workdir:
        directory = Path(workdir)
        stack = Child([sys.executable, "-m", "bench.web_stack", workdir], directory / "stack.log")
        web: Child | None = None
        try:
            address = (await stack.wait_for(READY)).group(1).decode()
            web = Child(
                [
                    sys.executable,
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
                figures = await fan_out(address, web, host, port, clients, args.seconds, directory)
                log(f"  {figures}")
                results["fan_out"].append(figures)
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
    parser.add_argument("--out", default="", help="also write the figures here as JSON")
    options = parser.parse_args()
    options.clients = [int(n) for n in options.clients.split(",") if n]
    figures = run(main(options))
    print(json.dumps(figures, indent=2))
    if options.out:
        Path(options.out).write_text(json.dumps(figures, indent=2) + "\n")
