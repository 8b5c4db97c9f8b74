"""Try failover by hand: FerretDB (PostgreSQL backend), two controllers and a worker (``make run-ha``).

``FERRETDB_HANDLER=sqlite`` runs FerretDB on SQLite instead.

Runs until Ctrl-C, then stops everything it started. In another terminal:

    shards ps demo --watch --controller 127.0.0.1:50051,127.0.0.1:50052
    shards launch demo count-sheep --controller 127.0.0.1:50051,127.0.0.1:50052
    kill -9 <the leader's pid, printed below>

and watch the standby take over (within ~2 s) while the table keeps updating.
"""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

from tests.support.ferretdb import start_ferretdb
from tests.support.processes import ProcessCluster

PORTS = {"a": 50051, "b": 50052}


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="shards-ha-"))
    server, why = start_ferretdb(workdir, durable=True)
    if why:
        print(f"FerretDB did not start: {why}")
        return 1
    cluster = ProcessCluster(workdir, f"{server.uri}shards", "examples.sheep:app")
    cluster.ports.update(PORTS)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name in PORTS:
            cluster.start_controller(name)
        cluster.start_worker("sheep-worker")
        addresses = ",".join(cluster.addresses)
        print(f"FerretDB ({server.handler}) at {server.uri} (data and logs in {workdir})")
        for name, service in cluster.controllers.items():
            print(f"controller {name}: 127.0.0.1:{PORTS[name]}  pid {service.popen.pid}")
        print(f"worker: pid {cluster.workers['sheep-worker'].popen.pid}\n")
        print(f"  shards ps demo --watch --controller {addresses}")
        print(f"  shards launch demo count-sheep --controller {addresses}")
        print("  kill -9 <the leader's pid>      # then watch the standby take over\n")
        print("Ctrl-C stops everything.")
        while not stopping:
            leader = cluster.leader()
            print(f"\rleader: {leader or '(none: a take-over is under way)':45}", end="", flush=True)
            time.sleep(0.5)  # a status line, not a test: polling is the point
        print()
    finally:
        cluster.close()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
