"""The demo behind ``make run``: a controller, a worker and a watching client.

    python -m examples.demo

Starts ``shards controller`` (embedded store in a temporary directory, a free
loopback port) and ``shards worker examples.sheep:app`` as subprocesses,
defines the scope ``demo``, launches the sheep processes, shows their
progress live, prints a summary once every run has ended, and stops both
services. It needs no terminal: piped, it prints a line per state change and
the final table instead of a live one. It gives up after a minute.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from examples.sheep import TOP_LEVEL
from shards import AsyncClient, ProcessRecord, ShardsError, WatchEventType, WorkerInfo
from shards.cli_render import ProcessBoard, format_duration, make_console, state_change_line, state_text

REPO = Path(__file__).resolve().parents[1]
SCOPE = "demo"
TIME_LIMIT_S = 60.0
STOP_TIMEOUT_S = 8.0
CONTROLLER_READY = re.compile(r"controller ready: listening on (\S+)")


class DemoFailed(Exception):
    """Something did not start or finish in time; the message says what."""


class Service:
    """A ``shards`` subprocess whose output goes to a log file."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shards.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise DemoFailed(
                f"the {self.name} exited with status {code}; its log ends with:\n{self.log_tail()}"
            )

    async def wait_for(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str]:
        """The first match of ``pattern`` in the log, once it appears."""
        while True:
            found = pattern.search(self.log_path.read_text(errors="replace"))
            if found:
                return found
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoFailed(
                    f"the {self.name} did not get ready in time; its log ends with:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after a timeout."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(STOP_TIMEOUT_S)
        finally:
            self._log.close()


async def wait_for_worker(client: AsyncClient, worker: Service, deadline: float) -> WorkerInfo:
    while True:
        alive = [w for w in await client.list_workers() if w.alive]
        if alive:
            return alive[0]
        worker.check_alive()
        if time.monotonic() > deadline:
            raise DemoFailed(f"the worker did not register in time; its log ends with:\n{worker.log_tail()}")
        await asyncio.sleep(0.1)


def all_ended(board: ProcessBoard, launched: dict[str, str]) -> bool:
    for process_id, run_id in launched.items():
        record = board.get(process_id)
        if record is None or record.run_id != run_id or not record.state.is_end:
            return False
    return True


async def watch_and_launch(client: AsyncClient, console: Console, deadline: float) -> ProcessBoard:
    """Launch the top-level processes and fold the watch into a board until every run has ended."""
    board = ProcessBoard(title=f"scope {SCOPE!r}")
    launched: dict[str, str] = {}
    synced = asyncio.Event()
    finished = asyncio.Event()

    async def follow() -> None:
        async for event in client.watch_processes(SCOPE):
            changed = board.apply(event)
            if event.type is WatchEventType.SYNCED:
                synced.set()
            elif changed is not None and synced.is_set() and not console.is_terminal:
                console.print(state_change_line(changed), soft_wrap=True)
            if launched and all_ended(board, launched):
                finished.set()

    watching = asyncio.create_task(follow())
    try:
        await until(synced, watching, deadline, lambda: "the watch did not start in time")
        # Piped, a line per state change is printed instead (see follow()).
        live = Live(board, console=console, refresh_per_second=8) if console.is_terminal else nullcontext()
        with live:
            runs = {pid: (await client.launch_process(SCOPE, pid)).run_id for pid in TOP_LEVEL}
            launched.update(runs)  # all at once: follow() judges "all ended" on the full set
            if all_ended(board, launched):
                finished.set()

            def still_active() -> str:
                active = ", ".join(r.process_id for r in board.records() if r.state.is_active)
                return f"processes still active after {TIME_LIMIT_S:.0f}s: {active or 'none'}"

            await until(finished, watching, deadline, still_active)
    finally:
        watching.cancel()
    return board


async def until(
    event: asyncio.Event, watching: asyncio.Task[None], deadline: float, late: Callable[[], str]
) -> None:
    """Wait for ``event``; DemoFailed if the watch ends first or the deadline passes."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait(
            {waiter, watching},
            timeout=max(0.1, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        waiter.cancel()
    if event.is_set():
        return
    if watching.done():
        watching.result()  # raises what broke the watch
        raise DemoFailed("the watch ended before the processes did")
    raise DemoFailed(late())


def print_summary(console: Console, records: list[ProcessRecord], elapsed_s: float) -> None:
    ran = [r for r in records if r.run_id]
    counts: dict[str, int] = {}
    for record in ran:
        counts[str(record.state)] = counts.get(str(record.state), 0) + 1
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    console.print()
    console.print(
        f"[bold]Summary[/]: {len(ran)} processes ran in scope {SCOPE!r} ({tally}) in {elapsed_s:.1f}s"
    )
    width = max(len(r.process_id) for r in ran) if ran else 0
    for record in ran:
        state = Text(f"{record.state!s:<8}", style=state_text(record.state).style)
        detail = record.error or record.progress.message
        console.print(
            f"  {record.process_id:<{width}}  ",
            state,
            f"{format_duration(record.duration):>6}  {detail}",
            sep="",
            soft_wrap=True,
            markup=False,
        )


async def run_demo(workdir: Path, services: list[Service], console: Console) -> int:
    started = time.monotonic()
    deadline = started + TIME_LIMIT_S
    console.print(
        "[bold]Shards demo[/]: a controller, a worker running the sheep processes, and this client."
    )
    controller = Service(
        "controller",
        ["controller", "--listen", "127.0.0.1:0", "--store", str(workdir / "shards.db")],
        workdir / "controller.log",
    )
    services.append(controller)
    address = (await controller.wait_for(CONTROLLER_READY, deadline)).group(1)
    worker = Service(
        "worker",
        ["worker", "examples.sheep:app", "--controller", address, "--capacity", str(len(TOP_LEVEL))],
        workdir / "worker.log",
    )
    services.append(worker)
    async with AsyncClient(address) as client:
        info = await wait_for_worker(client, worker, deadline)
        console.print(f"controller on {address}; worker {info.worker_id} registered")
        defined = await client.define_processes(SCOPE)
        console.print(
            f"defined {len(defined.processes)} processes in scope {SCOPE!r}; launching {', '.join(TOP_LEVEL)}"
        )
        board = await watch_and_launch(client, console, deadline)
    if not console.is_terminal:
        console.print(board.table())
    print_summary(console, board.records(), time.monotonic() - started)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that the services are stopped on SIGTERM too


def main() -> int:
    console = make_console()
    signal.signal(signal.SIGTERM, _interrupt)
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="shards-demo-") as workdir:
        try:
            return asyncio.run(run_demo(Path(workdir), services, console))
        except (DemoFailed, ShardsError) as error:
            print(f"demo failed: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("demo interrupted", file=sys.stderr)
            return 130
        finally:
            # The worker first, so that it leaves a controller that is still there.
            for service in reversed(services):
                service.stop()
            if services:
                console.print("controller and worker stopped.")


if __name__ == "__main__":
    sys.exit(main())
