"""The worker's liveness: registration and heartbeats on a thread and loop of their own.

Process code shares the worker's event loop (``async def`` processes run on
it), so a process that blocks that loop (``time.sleep``, blocking I/O) must not
silence the worker: the controller would take every run of the worker for
lost. Here, a thread with its own loop and its own channels registers and
heartbeats whatever the main loop does (blocking gRPC, no event loop at all),
and another thread watches the main loop: a turn that takes longer than
``BLOCKED_AFTER_S`` is logged with the run that took it.

A registration refused for good (another live worker has this id) ends the
worker: ``refused`` is then set with the controller's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from shards._grpc.channel import CHANNEL_OPTIONS
from shards._grpc.credentials import TlsConfig
from shards._grpc.status import LEADER_METADATA_KEY
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

# A main-loop turn longer than this is reported (heartbeats go on regardless).
BLOCKED_AFTER_S = 1.0
_TICK_S = 0.1
# Refusals that end the worker: retrying cannot help, and running unregistered
# would take runs that the controller never gave it.
_FATAL = (grpc.StatusCode.ALREADY_EXISTS,)


@dataclass(slots=True)
class Registration:
    """What the worker tells the controller about itself."""

    worker_id: str
    incarnation: str
    address: str
    capacity: int
    scopes: list[str]
    running_ids: Callable[[], list[str]]  # called from the liveness thread
    # How many runs this incarnation has received: read before running_ids, it
    # counts no run that list leaves out but one whose end was acknowledged.
    runs_received: Callable[[], int]
    run_name: Callable[[str], str]  # run id -> "run <id> (process <p>)", from the liveness thread
    worker_key: str = field(default="", repr=False)  # the controller must send it with every call
    # Told (on the main loop) of each run's log lines the controller has stored.
    logs_stored: Callable[[dict[str, int]], None] = lambda stored: None


# Between rounds of attempts at every controller address: 50 ms, doubling to 0.5 s.
RETRY_PAUSE_S = 0.05
MAX_RETRY_PAUSE_S = 0.5


class _Controllers:
    """Blocking channels to the controller addresses, following the leader (as ControllerChannel)."""

    def __init__(self, addresses: Sequence[str] | str, tls: TlsConfig | None, token: str) -> None:
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        self._addresses = list(addresses)
        self.address = self._addresses[0]
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict[str, grpc.Channel] = {}
        self._closed = threading.Event()  # ends a pause between attempts at once

    def _stub(self) -> pb_grpc.WorkerRegistryStub:
        channel = self._channels.get(self.address)
        if channel is None:
            if self._tls is None:
                channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            else:
                options = [*CHANNEL_OPTIONS, *self._tls.channel_options()]
                channel = grpc.secure_channel(self.address, self._tls.channel_credentials(), options=options)
            self._channels[self.address] = channel
        return pb_grpc.WorkerRegistryStub(channel)

    def call(self, invoke: Callable[[pb_grpc.WorkerRegistryStub, Any], T], deadline_s: float) -> T:
        """``invoke(stub, metadata)`` on the leader, following hints until ``deadline_s`` has passed.

        A leader's hint is followed at once; once every address has failed, the next round
        waits a little, longer each time (an address that refuses connections fails in
        microseconds: without the pause a worker whose controllers were all down spun a core).
        """
        deadline = time.monotonic() + deadline_s
        failed = 0
        while True:
            try:
                return invoke(self._stub(), self._metadata)
            except grpc.RpcError as error:
                code = error.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.is_set():
                    raise
                if self._redirect(error):
                    continue
                failed += 1
                if failed % len(self._addresses) == 0:
                    rounds = failed // len(self._addresses)
                    self._closed.wait(min(RETRY_PAUSE_S * 2 ** (rounds - 1), MAX_RETRY_PAUSE_S, left))

    def _redirect(self, error: grpc.RpcError) -> bool:
        """Move to the next address; True when it is the leader the error named."""
        metadata: Any = error.trailing_metadata() or ()
        hint = next((str(v) for k, v in metadata if k == LEADER_METADATA_KEY), "")
        if hint and hint != self.address:
            if hint not in self._addresses:
                self._addresses.append(hint)
            self.address = hint
            return True
        index = self._addresses.index(self.address) if self.address in self._addresses else -1
        self.address = self._addresses[(index + 1) % len(self._addresses)]
        return False

    def interrupt(self) -> None:
        """Calls under way give up at their next failure, without waiting for their deadline."""
        self._closed.set()

    def close(self) -> None:
        self._closed.set()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class Liveness:
    """Registers and heartbeats from a thread of its own; watches the main loop for blocking turns."""

    def __init__(
        self,
        registration: Registration,
        controller: Sequence[str] | str,
        *,
        tls: TlsConfig | None,
        token: str,
        on_registered: Callable[[], None],
        on_refused: Callable[[str], None],
    ) -> None:
        """``on_registered``/``on_refused`` are called on the main loop (thread-safe hand-over)."""
        self.registration = registration
        self._controllers = _Controllers(controller, tls, token)
        self._on_registered = on_registered
        self._on_refused = on_refused
        self.heartbeat_interval_s = 1.0
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._last_tick = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ main-loop side

    def start(self) -> None:
        """Start the threads (call from the main loop)."""
        self._main_loop = asyncio.get_running_loop()
        self._last_tick = time.monotonic()
        self._ticker = asyncio.create_task(self._tick(), name="liveness-tick")
        self._threads = [
            threading.Thread(target=self._stay_registered, name="shards-heartbeat", daemon=True),
            threading.Thread(target=self._watch_main_loop, name="shards-loop-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Stop heartbeating (the controller will take the worker for gone)."""
        self._stopping.set()
        self._controllers.interrupt()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            await loop.run_in_executor(None, thread.join, 5.0)
        self._controllers.close()

    async def _tick(self) -> None:
        while True:
            self._last_tick = time.monotonic()
            await asyncio.sleep(_TICK_S)

    def _to_main(self, callback: Callable[..., None], *args: object) -> None:
        if self._main_loop is not None and not self._main_loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._main_loop.call_soon_threadsafe(callback, *args)

    # ------------------------------------------------------------ the heartbeat thread

    def _register(self) -> None:
        r = self.registration
        request = pb.RegisterWorkerRequest(
            worker_id=r.worker_id,
            address=r.address,
            capacity=r.capacity,
            scopes=r.scopes,
            runs_received=r.runs_received(),  # before the list: see Registration
            running_run_ids=r.running_ids(),
            incarnation=r.incarnation,
            worker_key=r.worker_key,
        )
        # Short timeouts: a controller that does not answer (paused, partitioned)
        # must be left for the next address well within the worker timeout (3 s).
        reply = self._controllers.call(
            lambda stub, metadata: stub.RegisterWorker(request, timeout=2, metadata=metadata), 30.0
        )
        if reply.HasField("heartbeat_interval"):
            self.heartbeat_interval_s = reply.heartbeat_interval.ToTimedelta().total_seconds() or 1.0
        self._to_main(self._on_registered)
        log.info("worker %s registered with the controller at %s", r.worker_id, self._controllers.address)

    def _heartbeat(self) -> bool:
        r = self.registration
        received = r.runs_received()
        running = r.running_ids()
        request = pb.HeartbeatRequest(
            worker_id=r.worker_id, running_run_ids=running, incarnation=r.incarnation, runs_received=received
        )
        reply = self._controllers.call(
            lambda stub, metadata: stub.Heartbeat(request, timeout=1, metadata=metadata), 2.0
        )
        if reply.log_stored:
            self._to_main(r.logs_stored, dict(reply.log_stored))
        return bool(reply.registered)

    def _stay_registered(self) -> None:
        """Register, then heartbeat; register again when the controller forgets us (restart, take-over)."""
        worker_id = self.registration.worker_id
        registered = False
        while not self._stopping.is_set():
            try:
                if not registered:
                    self._register()
                    registered = True
                else:
                    registered = self._heartbeat()
                    if not registered:
                        continue
            except grpc.RpcError as error:
                registered = False
                code, details = error.code(), error.details()
                if code in _FATAL:
                    # Said once, by whoever runs the worker (``refused``; the CLI: one line, exit 2).
                    log.debug("the controller refuses worker %s for good: %s", worker_id, details)
                    self._to_main(self._on_refused, details or code.name)
                    return
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    log.error("the controller refuses worker %s: %s", worker_id, details)
                    self._stopping.wait(2.0)
                    continue
                log.warning("controller unreachable (%s): %s", code.name, details)
                self._stopping.wait(min(self.heartbeat_interval_s, 0.5))
                continue
            except Exception:  # never let the heartbeats die quietly
                log.exception("worker %s: heartbeat failed", worker_id)
                registered = False
            self._stopping.wait(self.heartbeat_interval_s)

    # ------------------------------------------------------------ the watch thread

    def _watch_main_loop(self) -> None:
        """Log a main-loop turn that blocks, with the run that blocks it, when it starts and ends."""
        blocked_by = ""
        stalled_tick = 0.0
        while not self._stopping.wait(_TICK_S):
            main = self._main_loop
            if main is None or main.is_closed():
                return
            lag = time.monotonic() - self._last_tick
            if lag > BLOCKED_AFTER_S and not blocked_by:
                blocked_by, stalled_tick = self._culprit(main), self._last_tick
                log.warning(
                    "worker %s: its event loop has been blocked for %.1f s by %s; heartbeats go on",
                    self.registration.worker_id,
                    lag,
                    blocked_by,
                )
            elif lag <= BLOCKED_AFTER_S and blocked_by:
                log.warning(
                    "worker %s: its event loop was blocked for about %.1f s by %s: an async def process "
                    "must never block (time.sleep, blocking I/O, long computations); make it a plain def "
                    "to run it in a thread of its own, or await non-blocking calls",
                    self.registration.worker_id,
                    self._last_tick - stalled_tick,
                    blocked_by,
                )
                blocked_by = ""

    def _culprit(self, main: asyncio.AbstractEventLoop) -> str:
        # Read from this thread: the main loop is stuck inside that task's step.
        task = asyncio.current_task(main)
        if task is None:
            return "code outside any task"
        name = task.get_name()
        if name.startswith("run-"):
            return self.registration.run_name(name[len("run-") :])
        return f"the task {name!r}"
