"""One run's log lines on the worker, from ``context.log`` until the controller has stored them.

Each line has an offset (its index in the run's whole log). Lines are shipped
from ``shipped`` on at each progress interval, at most ``LINES_PER_TICK`` per
run (a run with more to send is collected again ``BACKLOG_TICKS`` times as
often: many short turns of the loop on both sides, not a few long ones), in
events that fit the message limits whole (so no line is ever cut off a
batch), and kept until a heartbeat's reply says the controller stored them
(``acked``). A broken stream or a new registration sends again everything not
acknowledged (``rewind``): the controller skips what it already has. What is
kept is bounded (``MAX_KEPT_LINES``, ``MAX_KEPT_BYTES``): past that, the oldest
lines go, and the controller counts them lost. (Before they get here, a run's
code holds at most ``context.HELD_LINES`` not yet moved: a run logging over 4
million lines a second loses the oldest of those, uncounted.)
"""

from __future__ import annotations

import asyncio
from collections import deque

from shards import validation as v
from shards.processmanager.v1 import processmanager_pb2 as pb

LINES_PER_TICK = 2_000
BACKLOG_TICKS = 5  # with a 50 ms interval: a tick every 10 ms, up to 200,000 lines/s per run
MAX_EVENT_BYTES = 900 * 1024  # under the link's 1 MiB per event: an event is never cut
REST_BYTES = 900 * 1024  # what an end carries of the lines not acknowledged: under the link's 1 MiB
MAX_KEPT_LINES = 200_000
MAX_KEPT_BYTES = 32 * 1024 * 1024


class LogBuffer:
    __slots__ = ("_bytes", "_sizes", "offset", "pending", "resent", "shipped", "tail", "total")

    def __init__(self) -> None:
        # The run's last lines (its tail, which goes with the end as before).
        self.tail: deque[str] = deque(maxlen=v.LOG_TAIL_LINES)
        # Lines from ``offset`` not yet acknowledged stored, and their sizes: lists, not
        # deques, since the next lines to ship are sliced from the middle (a deque's
        # islice walks from its start: a tick cost the whole backlog before them).
        self.pending: list[str] = []
        self._sizes: list[int] = []
        self._bytes = 0
        self.offset = 0  # the offset of pending[0]
        self.shipped = 0  # lines up to here were sent on the stream
        self.total = 0  # lines the code logged
        # The next lines shipped are a resend from ``offset``: what the controller lacks below is lost.
        self.resent = False

    def take(self, logs: deque[str], limit: int | None = None) -> int:
        """Move the lines the code logged since the last call here (at most ``limit``); how many."""
        count = len(logs) if limit is None else min(len(logs), limit)  # popleft: the code may log meanwhile
        if not count:
            return 0
        popleft = logs.popleft
        batch = [popleft() for _ in range(count)]
        limit = v.MAX_LOG_LINE_LENGTH
        if max(map(len, batch)) > limit:
            batch = [line if len(line) <= limit else line[: limit - 1] + "…" for line in batch]
        if all(map(str.isascii, batch)):
            sizes = list(map(len, batch))
        else:
            sizes = [len(line.encode("utf-8", "replace")) for line in batch]
        self.pending.extend(batch)
        self._sizes.extend(sizes)
        self.tail.extend(batch[-v.LOG_TAIL_LINES :])
        self._bytes += sum(sizes)
        self.total += count
        self._forget(max(len(self.pending) - MAX_KEPT_LINES, 0))
        if self._bytes > MAX_KEPT_BYTES:
            excess, over = 0, self._bytes - MAX_KEPT_BYTES
            for size in self._sizes:
                if over <= 0:
                    break
                over -= size
                excess += 1
            self._forget(excess)
        if self.shipped < self.offset:
            # Lines went before they were sent: the next ones say so (the controller counts them lost).
            self.shipped = self.offset
            self.resent = True
        return count

    @property
    def backlog(self) -> bool:
        """Lines are waiting to be shipped."""
        return self.shipped < self.total

    def events(self) -> list[tuple[int, list[str]]]:
        """The next lines to ship: (offset, lines) groups, each within one event's limits."""
        out: list[tuple[int, list[str]]] = []
        start = self.shipped
        stop = min(self.total, start + LINES_PER_TICK)
        if start >= stop:
            return out
        index = start - self.offset
        lines = self.pending[index : index + stop - start]
        sizes = self._sizes[index : index + stop - start]
        at = 0
        step = v.MAX_LOG_LINES_PER_MESSAGE
        while at < len(lines):
            count = min(step, len(lines) - at)
            if sum(sizes[at : at + count]) + 8 * count > MAX_EVENT_BYTES:  # long lines: fewer of them
                used, count = 0, 0
                while at + count < len(lines) and (
                    not count or used + sizes[at + count] + 8 <= MAX_EVENT_BYTES
                ):
                    used += sizes[at + count] + 8
                    count += 1
            out.append((start + at, lines[at : at + count]))
            at += count
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
        self._forget(max(min(stored, self.total) - self.offset, 0))
        self.shipped = max(self.shipped, self.offset)

    def _forget(self, count: int) -> None:
        """The ``count`` oldest lines go."""
        if count <= 0:
            return
        self._bytes -= sum(self._sizes[:count])
        del self.pending[:count]
        del self._sizes[:count]
        self.offset += count

    def rewind(self) -> None:
        """Send again every line not acknowledged (the controller may not have them)."""
        self.shipped = self.offset
        self.resent = True

    def unshipped_bytes(self) -> int:
        """What the lines not yet sent weigh in a message."""
        unsent = self.total - self.shipped
        return sum(self._sizes[len(self._sizes) - unsent :]) + 8 * unsent if unsent else 0

    def take_resent(self) -> bool:
        resent, self.resent = self.resent, False
        return resent

    def rest(self, byte_budget: int = REST_BYTES) -> tuple[int, list[str]]:
        """The newest lines not acknowledged that fit ``byte_budget``, and the offset of the first:
        they go with the run's end (older ones, if any, were sent on the stream before)."""
        lines: list[str] = []
        used = 0
        for line, size in zip(reversed(self.pending), reversed(self._sizes), strict=True):
            used += size + 8
            if used > byte_budget:
                break
            lines.append(line)
        lines.reverse()
        return self.total - len(lines), lines


async def shipped(buffer: LogBuffer, logs: deque[str], interval_s: float, timeout_s: float = 10.0) -> None:
    """Until the lines of a run that has returned that were not sent yet fit its end (at most
    ``timeout_s``: a controller that is away gets what fits). Most runs' ends go at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    buffer.take(logs)
    while buffer.unshipped_bytes() > REST_BYTES and loop.time() < deadline:
        await asyncio.sleep(interval_s)
        buffer.take(logs)


SLICE_LINES = 4_000


async def take_in_slices(buffers: list[tuple[LogBuffer, deque[str]]]) -> None:
    """Move what runs logged, a slice at a time, letting the worker's loop run between slices
    (a burst of 100,000 lines is ~5 slices of a few milliseconds, not one long turn); at most
    what each run had logged when this began, so code that keeps logging cannot hold it."""
    for buffer, logs in buffers:
        left = len(logs)
        while left > SLICE_LINES:
            taken = buffer.take(logs, SLICE_LINES)
            if not taken:
                break  # the run's end took them meanwhile (it takes what is left)
            left -= taken
            await asyncio.sleep(0)
