"""The workers a controller knows: liveness, capacity and placement.

A worker is alive while it heartbeats; one silent for ``timeout_s`` is dead
and the controller marks its runs ``lost``. Placement picks the least loaded
live worker that serves the scope and has a free slot. Runs launched by a
running parent (children) do not take a slot: the parent already holds one
while it waits, and counting both could deadlock a worker of capacity 1.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards._grpc.credentials import WORKER_KEY_METADATA, TlsConfig, make_channel
from shards.models import WorkerInfo
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc


@dataclass(slots=True)
class WorkerEntry:
    worker_id: str
    address: str
    capacity: int
    scopes: tuple[str, ...]
    registered_at: datetime
    last_heartbeat_at: datetime
    last_seen: float  # time.monotonic()
    channel: grpc.aio.Channel
    stub: pb_grpc.WorkerAsyncStub
    runs: set[str] = field(default_factory=set)  # every run assigned to it
    slots_used: set[str] = field(default_factory=set)  # top-level runs only
    alive: bool = True
    # False for a worker known only from the store: it gets no runs (and is not
    # listed alive) until it has spoken to this leader.
    confirmed: bool = True
    incarnation: str = ""
    refused_until: float = 0.0  # monotonic: it refused a run, leave it alone until then
    # A run's stream to it never connected: no runs until it is heard from again
    # (a heartbeat or a registration), not before the sweep finds a killed one dead.
    unreachable: bool = False
    served: dict[str, bool] = field(default_factory=dict)  # scope id -> serves it
    # The worker's own key (sent with every call to it). A worker restored from
    # the store has none here: its next heartbeat asks it to register again.
    key: str = field(default="", repr=False)
    key_known: bool = True

    def serves(self, scope_id: str) -> bool:
        # Cached: placement asks for every queued run, and fnmatch is not cheap.
        served = self.served.get(scope_id)
        if served is None:
            if len(self.served) > 10_000:
                self.served.clear()
            served = self.served[scope_id] = any(fnmatch.fnmatchcase(scope_id, p) for p in self.scopes)
        return served

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - len(self.slots_used)) if self.alive and self.confirmed else 0

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            capacity=self.capacity,
            running=len(self.runs),
            scopes=self.scopes,
            registered_at=self.registered_at,
            last_heartbeat_at=self.last_heartbeat_at,
            alive=self.alive and self.confirmed,
            incarnation=self.incarnation,
        )


class WorkerPool:
    """Registered workers, by id."""

    def __init__(self, timeout_s: float, channel_options: list[tuple[str, object]] | None = None) -> None:
        self.timeout_s = timeout_s
        self._workers: dict[str, WorkerEntry] = {}
        self._channel_options = channel_options or []
        self._tls: TlsConfig | None = None
        self._secret = ""

    def secure(self, tls: TlsConfig | None, secret: str) -> None:
        """Call workers over TLS (``tls``) and/or with ``authorization: Bearer <secret>``.

        Applies to channels opened from now on: call it before workers register.
        """
        self._tls = tls
        self._secret = secret

    def register(
        self,
        worker_id: str,
        address: str,
        capacity: int,
        scopes: tuple[str, ...],
        incarnation: str = "",
        key: str = "",
    ) -> tuple[WorkerEntry, WorkerEntry | None]:
        """Add (or replace) a worker; returns the new entry and the one it replaced."""
        previous = self._workers.get(worker_id)
        if previous is not None and previous.address == address and previous.key == key:
            channel, stub = previous.channel, previous.stub
        else:
            channel = make_channel(
                address,
                tls=self._tls,
                token=self._secret,
                options=self._channel_options,
                headers=[(WORKER_KEY_METADATA, key)] if key else (),
            )
            stub = pb_grpc.WorkerStub(channel)  # an async stub on an aio channel
        now = datetime.now(UTC)
        entry = WorkerEntry(
            worker_id=worker_id,
            address=address,
            capacity=max(1, capacity),
            scopes=scopes or ("*",),
            registered_at=now,
            last_heartbeat_at=now,
            last_seen=time.monotonic(),
            channel=channel,
            stub=stub,
            incarnation=incarnation,
            key=key,
        )
        if previous is not None:
            entry.runs = previous.runs
            entry.slots_used = previous.slots_used
        self._workers[worker_id] = entry
        return entry, previous

    def restore(self, info: WorkerInfo, grace_s: float = 0.0) -> WorkerEntry:
        """A worker known from the store (after a restart or take-over), alive until proven silent.

        ``grace_s`` more than the usual timeout: a worker must first notice that
        its controller is gone and find the new leader.
        """
        entry, _ = self.register(info.worker_id, info.address, info.capacity, info.scopes, info.incarnation)
        if info.registered_at is not None:
            entry.registered_at = info.registered_at
        entry.last_seen += grace_s
        entry.confirmed = False
        entry.key_known = False
        return entry

    def get(self, worker_id: str) -> WorkerEntry | None:
        return self._workers.get(worker_id)

    async def answers(self, entry: WorkerEntry, timeout_s: float = 1.0) -> bool:
        """True if something still answers at the worker's address (its health service)."""
        try:
            await health_pb2_grpc.HealthStub(entry.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return True

    def heartbeat(self, worker_id: str, incarnation: str) -> WorkerEntry | None:
        """The worker's entry, now seen; None when it must register (again)."""
        entry = self._workers.get(worker_id)
        if entry is None or not entry.alive or entry.incarnation != incarnation or not entry.key_known:
            return None
        entry.last_seen = time.monotonic()
        entry.last_heartbeat_at = datetime.now(UTC)
        entry.confirmed = True
        entry.unreachable = False
        return entry

    def forgive(self, seconds: float) -> None:
        """Move every worker's last sign of life ``seconds`` later (the controller was not listening)."""
        for entry in self._workers.values():
            entry.last_seen += seconds

    def expire(self) -> list[WorkerEntry]:
        """Mark workers silent for longer than the timeout dead; returns them."""
        deadline = time.monotonic() - self.timeout_s
        dead = [w for w in self._workers.values() if w.alive and w.last_seen < deadline]
        for entry in dead:
            entry.alive = False
        return dead

    def forget(self, worker_id: str) -> WorkerEntry | None:
        return self._workers.pop(worker_id, None)

    def choose(self, scope_id: str, needs_slot: bool, preferred: str = "") -> WorkerEntry | None:
        """The worker to run a process of ``scope_id`` on, or None when none can now."""
        now = time.monotonic()
        best: WorkerEntry | None = None
        for entry in self._workers.values():
            if (
                not (entry.alive and entry.confirmed)
                or entry.unreachable
                or entry.refused_until > now
                or not entry.serves(scope_id)
            ):
                continue
            if needs_slot and len(entry.slots_used) >= entry.capacity:
                continue
            if entry.worker_id == preferred:
                return entry
            if best is None or len(entry.slots_used) / entry.capacity < len(best.slots_used) / best.capacity:
                best = entry
        return best

    def free_slots(self) -> int:
        """Free slots over every live worker (an upper bound on what can start now)."""
        return sum(entry.free_slots for entry in self._workers.values())

    def any_serving(self, scope_id: str) -> list[WorkerEntry]:
        """Live workers serving the scope, least loaded first."""
        entries = [w for w in self._workers.values() if w.alive and w.confirmed and w.serves(scope_id)]
        return sorted(entries, key=lambda w: len(w.slots_used) / w.capacity)

    def reconnecting(self, scope_id: str) -> bool:
        """Whether a worker known only from the store, not yet silent for too long, serves the scope."""
        return any(w.alive and not w.confirmed and w.serves(scope_id) for w in self._workers.values())

    def assign(self, entry: WorkerEntry, run_id: str, needs_slot: bool) -> None:
        entry.runs.add(run_id)
        if needs_slot:
            entry.slots_used.add(run_id)

    def free_slot(self, worker_id: str, run_id: str) -> bool:
        """The slot of ``run_id`` is free (its code ended) though the run is still the worker's
        until its end is stored; whether it held one."""
        entry = self._workers.get(worker_id)
        if entry is None or run_id not in entry.slots_used:
            return False
        entry.slots_used.discard(run_id)
        return True

    def release(self, worker_id: str, run_id: str) -> None:
        entry = self._workers.get(worker_id)
        if entry is not None:
            entry.runs.discard(run_id)
            entry.slots_used.discard(run_id)

    def all(self) -> list[WorkerEntry]:
        return list(self._workers.values())

    async def close(self) -> None:
        for entry in self._workers.values():
            await entry.channel.close(None)
        self._workers.clear()
