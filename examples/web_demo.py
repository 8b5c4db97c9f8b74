"""The demo behind ``make web``: a controller, the sheep worker and the web GUI, until Ctrl-C.

    python -m examples.web_demo [--listen 127.0.0.1:8080]

Starts ``shards controller`` (embedded store in a temporary directory, a free
loopback port), ``shards worker examples.sheep:app`` and ``shards web``,
defines the scope ``demo`` and prints the page's URL. Drive the sheep from the
browser; Ctrl-C stops all three.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from examples.demo import CONTROLLER_READY, DemoFailed, Service, _interrupt, wait_for_worker
from examples.sheep import TOP_LEVEL
from shards import AsyncClient, ShardsError

SCOPE = "demo"
START_LIMIT_S = 60.0
WEB_READY = re.compile(r"web GUI ready: open (\S+)")


async def start(workdir: Path, services: list[Service], listen: str) -> str:
    deadline = time.monotonic() + START_LIMIT_S
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
        await wait_for_worker(client, worker, deadline)
        defined = await client.define_processes(SCOPE)
    web = Service("web GUI", ["web", "--controller", address, "--listen", listen], workdir / "web.log")
    services.append(web)
    url = (await web.wait_for(WEB_READY, deadline)).group(1)
    print(
        f"controller on {address}, a worker running the sheep, "
        f"{len(defined.processes)} processes in scope {SCOPE!r}"
    )
    return f"{url}?scope={SCOPE}"


async def watch(services: list[Service]) -> None:
    while True:
        for service in services:
            service.check_alive()
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make web", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", help="where the GUI listens (default 127.0.0.1:8080)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="shards-web-demo-") as workdir:
        try:
            url = asyncio.run(start(Path(workdir), services, args.listen))
            print(
                f"\n    open {url}\n\nRun, stop and watch the sheep in the browser; Ctrl-C stops the demo.",
                flush=True,
            )
            asyncio.run(watch(services))
            return 0
        except (DemoFailed, ShardsError) as error:
            print(f"demo failed: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ndemo stopped", file=sys.stderr)
            return 0
        finally:
            for service in reversed(services):
                service.stop()
            if services:
                print("controller, worker and web GUI stopped.")


if __name__ == "__main__":
    sys.exit(main())
