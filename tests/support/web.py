"""The web GUI server on port 0, on a cluster's loop, and plain HTTP calls to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from examples import sheep
from shards import RetryPolicy
from shards_web.config import WebConfig
from shards_web.server import WebServer
from shards_worker import ProcessContext, ProcessDefinition, WorkerApp
from tests.support.apps import gate, gated, stubborn, until_stopped
from tests.support.cluster import Cluster

CSRF = {"X-Shards-Request": "1"}
#: The web tests do not time the loss of a worker: under load (the browser, four test
#: workers on two cores) a worker silent for the clusters' usual 1 s is not dead.
PATIENT: dict[str, Any] = {"worker_timeout_s": 10.0}


def debug_dump(context: ProcessContext) -> None:
    context.log("dumped everything")
    context.report_progress("dumped", 1.0)


def slow_steps(context: ProcessContext) -> None:
    """Reports progress until stopped (or gate(scope) opens), a step every 50 ms."""
    opened = gate(context.scope_id)
    for n in range(1, 10_000):
        if not context.should_continue() or opened.is_set():
            return
        context.report_progress(f"step {n}", min(n / 200, 1.0))
        time.sleep(0.05)


def web_processes(farm: sheep.Farm) -> list[ProcessDefinition]:
    """The sheep, and what the filters need: a special process, a detail process, one that waits.

    A scope named ``many-N`` has N quick processes instead (for the large-table test and bench);
    one named ``trouble-...`` the processes whose trouble the table must tell (``trouble``);
    ``demo`` the sheep alone, as ``make web``.
    """
    if farm.name.startswith("trouble-"):
        return trouble()
    if farm.name == "demo":  # as `make web` shows it (the README's picture)
        return sheep.processes(farm)
    if farm.name.startswith("many-"):
        count = int(farm.name.removeprefix("many-"))
        return [
            ProcessDefinition(f"item-{n:05d}", debug_dump, name=f"Item {n:05d}", detail_level=1)
            for n in range(count)
        ]
    return [
        *sheep.processes(farm),
        ProcessDefinition("debug-dump", debug_dump, name="Dump the state", detail_level=1, special=True),
        ProcessDefinition("steps", slow_steps, name="Slow steps", detail_level=1),
        ProcessDefinition("until-stopped", until_stopped, name="Runs until stopped", detail_level=1),
        ProcessDefinition("gated", gated, name="Gated detail", detail_level=3),
    ]


def always_fails(context: ProcessContext) -> None:
    raise RuntimeError(f"attempt {context.attempt} went wrong")


def trouble() -> list[ProcessDefinition]:
    """A stop ignored (in a thread: overdue after 0.3 s, until gate("stubborn:" + scope) opens),
    a run over its time limit, and one that retries (attempt 2 after 0.5 s, attempt 3 after 50 s)."""
    return [
        ProcessDefinition("ignores-stop", stubborn, name="Ignores stops", stop_grace_s=0.3),
        ProcessDefinition("too-slow", until_stopped, name="Over its time limit", timeout_s=0.5),
        ProcessDefinition(
            "retries",
            always_fails,
            name="Retries",
            retry=RetryPolicy(max_attempts=5, backoff_s=0.5, backoff_multiplier=100, max_backoff_s=600),
        ),
    ]


WEB_APP = WorkerApp(get_process_list=web_processes, get_scope_data=sheep.farm_of)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    data: Any = field(default=None)


class Web:
    """A GUI server in front of ``cluster``'s controller."""

    def __init__(self, cluster: Cluster, **config: Any) -> None:
        self.cluster = cluster
        settings: dict[str, Any] = {
            "controller": (cluster.address,),
            "listen": "127.0.0.1:0",
            "idle_watch_s": 1.0,
        }
        settings.update(config)
        self.server = WebServer(WebConfig(**settings))
        cluster.run(self.server.start())

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    @property
    def feeds(self) -> int:
        """Upstream watches the GUI server holds."""
        from shards_web.sse import HUB

        return len(self.server.app[HUB].feeds)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        sent = dict(headers if headers is not None else (CSRF if method == "POST" else {}))
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        if token is not None:
            sent["Cookie"] = f"shards_token={token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                status, got, payload = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, got, payload = error.code, dict(error.headers), error.read()
        parsed = None
        if got.get("Content-Type", "").startswith("application/json"):
            parsed = json.loads(payload)
        return Reply(status, got, payload, parsed)

    def get(self, path: str, **options: Any) -> Reply:
        return self.request("GET", path, **options)

    def post(self, path: str, body: Any = None, **options: Any) -> Reply:
        return self.request(
            "POST", path, {} if body is None and options.get("raw") is None else body, **options
        )

    def close(self) -> None:
        self.cluster.run(self.server.stop())


class SseReader:
    """Reads /api/events in a thread: the events (type, id, data) as they come.

    ``paused``: the thread reads nothing until it is set, with a receive buffer of
    ``rcvbuf`` bytes (a browser on a slow link, or asleep).
    """

    def __init__(
        self,
        web: Web,
        scope: str,
        token: str | None = None,
        last_event_id: int | None = None,
        paused: threading.Event | None = None,
        rcvbuf: int = 0,
    ) -> None:
        headers = {"Accept": "text/event-stream"}
        if token is not None:
            headers["Cookie"] = f"shards_token={token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        host, port = web.url.removeprefix("http://").rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=30)
        if rcvbuf:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
            sock.settimeout(30)
            sock.connect((host, int(port)))
            self._connection.sock = sock
        self._paused = paused
        self._connection.request("GET", f"/api/events?scope={scope}", headers=headers)
        self.response = self._connection.getresponse()
        self.events: list[tuple[str, int | None, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, event_id, data = "message", None, ""
        if self._paused is not None:
            self._paused.wait(60)
        try:
            while True:
                raw = self.response.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        self.events.append((kind, event_id, json.loads(data)))
                    kind, event_id, data = "message", None, ""
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data += line[6:]
        except Exception:  # hung up: the stream ends here
            return

    @property
    def local_port(self) -> int:
        sock = self._connection.sock
        assert sock is not None
        port: int = sock.getsockname()[1]
        return port

    def of(self, kind: str) -> list[tuple[str, int | None, Any]]:
        return [e for e in list(self.events) if e[0] == kind]

    def records(self) -> dict[str, dict[str, Any]]:
        """The scope as this reader knows it: the last snapshot with the changes after it applied."""
        known: dict[str, dict[str, Any]] = {}
        for kind, _, data in list(self.events):
            if kind == "snapshot":
                known = {r["process_id"]: r for r in data["processes"]}
            elif kind == "changes":
                known.update({r["process_id"]: r for r in data["processes"]})
                for process_id in data["removed"]:
                    known.pop(process_id, None)
        return known

    def close(self) -> None:
        """Hang up (as a browser closing its tab does)."""
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._connection.close()
        self._thread.join(5)
