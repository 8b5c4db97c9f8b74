"""One run's log lines on the worker, from ``context.log`` until the controller has stored them.

Each line has an offset (its index in the run's whole log). Lines are shipped
from ``shipped`` on at each progress interval, at most ``LINES_PER_TICK`` per
run, in events that fit the message limits whole (so no line is ever cut off
a batch), and kept until a heartbeat's reply says the controller stored them
(``acked``). A broken stream or a new registration sends again everything not
acknowledged (``rewind``): the controller skips what it already has. What is
kept is bounded (``MAX_KEPT_LINES``, ``MAX_KEPT_BYTES``): past that, the oldest
lines go, and the controller counts them lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice

from shards import validation as v
from shards.processmanager.v1 import processmanager_pb2 as pb

LINES_PER_TICK = 10_000  # with a 50 ms interval: up to 200,000 lines/s per run
MAX_EVENT_BYTES = 900 * 1024  # under the link's 1 MiB per event: an event is never cut
MAX_KEPT_LINES = 200_000
MAX_KEPT_BYTES = 32 * 1024 * 1024


class LogBuffer:
    __slots__ = ("_bytes", "_sizes", "offset", "pending", "resent", "shipped", "tail", "total")

    def __init__(self) -> None:
        # The run's last lines (its tail, which goes with the end as before).
        self.tail: deque[str] = deque(maxlen=v.LOG_TAIL_LINES)
        self.pending: deque[str] = deque()  # lines from ``offset`` not yet acknowledged stored
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self.offset = 0  # the offset of pending[0]
        self.shipped = 0  # lines up to here were sent on the stream
        self.total = 0  # lines the code logged
        # The next lines shipped are a resend from ``offset``: what the controller lacks below is lost.
        self.resent = False

    def take(self, logs: deque[str]) -> int:
        """Move the lines the code logged since the last call here; returns how many."""
        count = 0
        pending, sizes, tail = self.pending, self._sizes, self.tail
        while logs:
            line = logs.popleft()
            if len(line) > v.MAX_LOG_LINE_LENGTH:
                line = line[: v.MAX_LOG_LINE_LENGTH - 1] + "…"
            size = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
            pending.append(line)
            sizes.append(size)
            tail.append(line)
            self._bytes += size
            count += 1
        self.total += count
        while len(pending) > MAX_KEPT_LINES or self._bytes > MAX_KEPT_BYTES:
            pending.popleft()
            self._bytes -= sizes.popleft()
            self.offset += 1
        if self.shipped < self.offset:
            # Lines went before they were sent: the next ones say so (the controller counts them lost).
            self.shipped = self.offset
            self.resent = True
        return count

    def events(self) -> list[tuple[int, list[str]]]:
        """The next lines to ship: (offset, lines) groups, each within one event's limits."""
        out: list[tuple[int, list[str]]] = []
        start = self.shipped
        stop = min(self.total, start + LINES_PER_TICK)
        if start >= stop:
            return out
        index = start - self.offset
        group: list[str] = []
        used = 0
        group_offset = start
        count = stop - start
        for line, size in zip(
            islice(self.pending, index, index + count), islice(self._sizes, index, index + count), strict=True
        ):
            size += 8
            if group and (len(group) >= v.MAX_LOG_LINES_PER_MESSAGE or used + size > MAX_EVENT_BYTES):
                out.append((group_offset, group))
                group_offset += len(group)
                group, used = [], 0
            group.append(line)
            used += size
        if group:
            out.append((group_offset, group))
        self.shipped = stop
        return out

    def line_events(self, run_id: str) -> list[pb.RunEvent]:
        """``events()`` as RunEvents; the first says when it is a resend."""
        groups = self.events()
        return [
            pb.RunEvent(
                run_id=run_id,
                log_lines=lines,
                log_offset=offset,
                has_log_offset=True,
                replaces_log=index == 0 and self.take_resent(),
            )
            for index, (offset, lines) in enumerate(groups)
        ]

    def acked(self, stored: int) -> None:
        """The controller has stored the lines below ``stored``: forget them."""
        drop = min(stored, self.total) - self.offset
        for _ in range(max(drop, 0)):
            self.pending.popleft()
            self._bytes -= self._sizes.popleft()
        self.offset += max(drop, 0)
        self.shipped = max(self.shipped, self.offset)

    def rewind(self) -> None:
        """Send again every line not acknowledged (the controller may not have them)."""
        self.shipped = self.offset
        self.resent = True

    def take_resent(self) -> bool:
        resent, self.resent = self.resent, False
        return resent

    def rest(self) -> list[str]:
        """The lines not acknowledged, from ``offset`` (they go with the run's end)."""
        return list(self.pending)


async def shipped(buffer: LogBuffer, logs: deque[str], interval_s: float, timeout_s: float = 10.0) -> None:
    """Until every line of a run that has returned went out on the stream (at most ``timeout_s``:
    a controller that is away gets them with the end, as far as they fit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    buffer.take(logs)
    while buffer.shipped < buffer.total and loop.time() < deadline:
        await asyncio.sleep(interval_s)
        buffer.take(logs)
