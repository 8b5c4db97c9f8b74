"""One upstream watch per scope, fanned out to every browser that watches it.

A ``ScopeFeed`` follows ``WatchProcesses`` for one scope and keeps the scope's
records (as the JSON the page gets), their revisions and the ids removed
lately. Each browser is a ``Subscriber``: it is sent a snapshot, or, when it
reconnects with ``Last-Event-ID``, only what changed after that revision, then
every change. Changes are sent at most every ``FLUSH_S`` (the latest record per
process, in one event whose id is the newest revision), and each event is
encoded once for all subscribers and written as the same bytes to each (see
``subscriber``); a browser that cannot keep up is sent the newest state later.

A broken upstream watch (controller restart, take-over) is reopened from the
last revision seen, after a unary call that finds the leader; browsers are
told ``reconnecting`` meanwhile and miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from shards import AsyncClient
from shards.errors import DeadlineExceeded, ResourceExhausted, ShardsError, Unavailable
from shards.models import WatchEventType
from shards_web import serialize
from shards_web.errors import HTTP_STATUS
from shards_web.subscriber import Subscriber, chunk

log = logging.getLogger(__name__)

FLUSH_S = 0.02
HEARTBEAT_S = 15.0
#: How often browsers left behind (full socket buffers) are looked at again.
CATCH_UP_S = 0.05
MAX_TOMBSTONES = 10_000
_RETRYABLE = (Unavailable, ResourceExhausted, DeadlineExceeded)
E = WatchEventType


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ScopeFeed:
    def __init__(self, scope_id: str, client: AsyncClient, on_end: Callable[[ScopeFeed], None]) -> None:
        self.scope_id = scope_id
        self._client = client
        self._on_end = on_end
        self.records: dict[str, dict[str, Any]] = {}
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        self.revision = 0
        self._floor = -1  # a browser that saw revision L >= floor can be brought up to date by replay
        self.synced = False
        self.status: dict[str, Any] = {"upstream": "connecting", "message": ""}
        self.subscribers: set[Subscriber] = set()
        self._dirty: dict[str, dict[str, Any] | None] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self._snapshot_cache: tuple[int, bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._catch_up_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._follow())
        self._heartbeat = asyncio.get_running_loop().call_later(HEARTBEAT_S, self._beat)

    async def close(self) -> None:
        for handle in (self._flush_handle, self._idle_handle, self._heartbeat, self._catch_up_handle):
            if handle is not None:
                handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for subscriber in list(self.subscribers):
            subscriber.finish()

    def subscribe(self, transport: asyncio.WriteTransport, last_event_id: int | None) -> Subscriber:
        """A browser on ``transport`` (the response's headers sent): the status, then its catch-up."""
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        subscriber = Subscriber(transport, None)
        self.subscribers.add(subscriber)
        first = sse("status", self.status)
        if self.synced:
            first += self._catch_up(last_event_id)
            subscriber.send(chunk(first), self.revision)
        else:
            subscriber.send(chunk(first))  # the snapshot comes when the feed has it
        return subscriber

    def unsubscribe(self, subscriber: Subscriber, idle_s: float) -> None:
        self.subscribers.discard(subscriber)
        if not self.subscribers and self._idle_handle is None:
            self._idle_handle = asyncio.get_running_loop().call_later(idle_s, self._end)

    def _end(self) -> None:
        self._idle_handle = None
        if not self.subscribers:
            self._on_end(self)

    def _beat(self) -> None:
        self._broadcast(b": keep-alive\n\n")
        self._heartbeat = asyncio.get_running_loop().call_later(HEARTBEAT_S, self._beat)

    # ------------------------------------------------------------ what a browser is sent

    def _snapshot(self) -> bytes:
        cached = self._snapshot_cache
        if cached is not None and cached[0] == self.revision:
            return cached[1]
        blob = sse(
            "snapshot", {"revision": self.revision, "processes": list(self.records.values())}, self.revision
        )
        self._snapshot_cache = (self.revision, blob)
        return blob

    def _catch_up(self, last_event_id: int | None) -> bytes:
        if last_event_id is None or not self._floor <= last_event_id <= self.revision:
            return self._snapshot()
        changed = [r for r in self.records.values() if r["revision"] > last_event_id]
        removed = [pid for pid, revision in self._tombstones.items() if revision > last_event_id]
        if not changed and not removed:
            return b""
        return sse(
            "changes",
            {"revision": self.revision, "processes": changed, "removed": removed},
            self.revision,
        )

    def _broadcast(self, blob: bytes, revision: int | None = None) -> None:
        """``blob`` to every browser (``revision``: what it brings them to), framed once for all."""
        frame = chunk(blob)
        behind = False
        for subscriber in list(self.subscribers):
            subscriber.send(frame, revision)
            behind = behind or subscriber.behind
        if behind and self._catch_up_handle is None:
            self._catch_up_handle = asyncio.get_running_loop().call_later(CATCH_UP_S, self._catch_up_behind)

    def _catch_up_behind(self) -> None:
        """Send each browser left behind whose buffer has drained the newest state, in one event."""
        self._catch_up_handle = None
        frames: dict[int | None, bytes] = {}  # one encoding per revision they were left at
        waiting = False
        for subscriber in list(self.subscribers):
            if not subscriber.behind:
                continue
            if not subscriber.drained():
                waiting = True
                continue
            if not self.synced:
                subscriber.catch_up(chunk(sse("status", self.status)), None)
                continue
            left_at = subscriber.revision
            if left_at not in frames:
                frames[left_at] = chunk(sse("status", self.status) + self._catch_up(left_at))
            subscriber.catch_up(frames[left_at], self.revision)
        if waiting:
            self._catch_up_handle = asyncio.get_running_loop().call_later(CATCH_UP_S, self._catch_up_behind)

    def _set_status(self, upstream: str, message: str = "") -> None:
        if self.status["upstream"] == upstream and self.status["message"] == message:
            return
        self.status = {"upstream": upstream, "message": message}
        self._broadcast(sse("status", self.status))

    # ------------------------------------------------------------ what the controller sends

    def _replace(self, records: dict[str, dict[str, Any]], revision: int) -> None:
        self._dirty.clear()
        self.records = records
        self._tombstones.clear()
        self.revision = revision
        self._floor = revision
        self.synced = True
        self._broadcast(self._snapshot(), revision)

    def _change(self, record: dict[str, Any], revision: int) -> None:
        record["revision"] = max(record["revision"], revision)
        process_id = record["process_id"]
        self.records[process_id] = record
        self._tombstones.pop(process_id, None)
        self._mark(process_id, record, revision)

    def _remove(self, process_id: str, revision: int) -> None:
        self.records.pop(process_id, None)
        self._tombstones[process_id] = revision
        self._tombstones.move_to_end(process_id)
        while len(self._tombstones) > MAX_TOMBSTONES:
            _, oldest = self._tombstones.popitem(last=False)
            self._floor = max(self._floor, oldest)
        self._mark(process_id, None, revision)

    def _mark(self, process_id: str, record: dict[str, Any] | None, revision: int) -> None:
        self.revision = max(self.revision, revision)
        self._dirty[process_id] = record
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._last_flush + FLUSH_S - loop.time())
            self._flush_handle = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._last_flush = asyncio.get_running_loop().time()
        if not self._dirty:
            return
        changed = [r for r in self._dirty.values() if r is not None]
        removed = [pid for pid, r in self._dirty.items() if r is None]
        self._dirty.clear()
        data = {"revision": self.revision, "processes": changed, "removed": removed}
        self._broadcast(sse("changes", data, self.revision), self.revision)

    async def _follow(self) -> None:
        revision = 0
        backoff_s = 0.05
        while True:
            snapshot: dict[str, dict[str, Any]] | None = None
            try:
                stream = self._client.watch_processes(self.scope_id, from_revision=revision, resume=False)
                async for event in stream:
                    if event.type is E.SNAPSHOT and event.process is not None:
                        if snapshot is None:
                            snapshot = {}
                        snapshot[event.process.process_id] = serialize.record(event.process)
                    elif event.type is E.RESET:
                        snapshot = {}
                    elif event.type is E.SYNCED:
                        if snapshot is not None or not self.synced:
                            self._replace(snapshot or {}, event.revision)
                        snapshot = None
                        revision = max(revision, event.revision)
                        backoff_s = 0.05
                        self._set_status("live")
                    elif event.type is E.CHANGED and event.process is not None:
                        self._change(serialize.record(event.process), event.revision)
                        revision = max(revision, event.revision)
                    elif event.type is E.REMOVED and event.process is not None:
                        self._remove(event.process.process_id, event.revision)
                        revision = max(revision, event.revision)
                self._set_status("reconnecting", "the controller ended the watch")
            except _RETRYABLE as error:
                self._set_status("reconnecting", error.message)
            except ShardsError as error:
                self._fail(error)
                return
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 1.0)
            with contextlib.suppress(ShardsError):
                await self._client.who_am_i()  # a unary call finds the leader among the addresses

    def _fail(self, error: ShardsError) -> None:
        status = HTTP_STATUS.get(error.code, 502)
        log.info("the watch of scope %r was refused: %s", self.scope_id, error.message)
        blob = sse(
            "refused", {"error": {"status": status, "code": error.code.name, "message": error.message}}
        )
        for subscriber in list(self.subscribers):
            subscriber.finish(chunk(blob))
        self._on_end(self)


class FeedHub:
    """The feeds of one GUI server, by (scope, upstream credential)."""

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._feeds: dict[tuple[str, str], ScopeFeed] = {}
        self._ending: set[asyncio.Task[None]] = set()

    @property
    def feeds(self) -> list[ScopeFeed]:
        return list(self._feeds.values())

    def feed(self, scope_id: str, credential: str, client: AsyncClient) -> ScopeFeed:
        key = (scope_id, credential)
        feed = self._feeds.get(key)
        if feed is None:

            def ended(which: ScopeFeed) -> None:
                if self._feeds.get(key) is which:
                    del self._feeds[key]
                task = asyncio.ensure_future(which.close())
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

            feed = self._feeds[key] = ScopeFeed(scope_id, client, ended)
            feed.start()
        return feed

    def unsubscribe(self, feed: ScopeFeed, subscriber: Subscriber) -> None:
        feed.unsubscribe(subscriber, self._idle_s)

    async def close(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            await feed.close()
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
