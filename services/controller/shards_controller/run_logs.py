"""Whole run logs: the lines workers send, stored in chunks, served by offset.

Every line of a run has an offset, its index in the run's whole log, given by
the worker. So a resend (after a re-registration, or with the end) is
appended once: lines the controller already has are skipped. The leader keeps
in memory, for each active run, the lines not yet stored and the partial last
chunk (reads see stored lines only: an offset a reader was given is never
past what a new leader has); a flush every ``log_flush_interval_s`` writes
them (the partial chunk rewritten as it fills), in slices of at most ``_FLUSH_CHUNKS`` chunks so that a
burst of lines never makes one long write that launches would wait behind. A
run's end is committed only after its lines are stored (``flush``), and the
worker forgets lines once a heartbeat's reply says they are stored
(``stored_offsets``): no line is lost or doubled across a restart or take-over.

Past ``log_max_lines`` or ``log_max_bytes``, the oldest chunks go whole; the
log's ``dropped`` counts their lines (offsets below it are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from shards import validation as v
from shards.errors import InvalidArgument
from shards.models import Run
from shards_controller.state import State
from shards_controller.store import LOG_CHUNK_LINES, LogChunk, LogMeta, LogWrite

log = logging.getLogger(__name__)

C = LOG_CHUNK_LINES
MAX_PAGE_LINES = 10_000
DEFAULT_PAGE_LINES = 1_000
MAX_PAGE_BYTES = 2 * 1024 * 1024
_FLUSH_CHUNKS = 4  # at most this many chunks (1,024 lines, ~45 KB of usual lines) per store write
# What stands for lines a worker could not keep (its buffer overflowed): rare, and counted.
LOST_LINE = "[line lost: the worker's buffer overflowed before it could send it]"


def utf8_size(lines: list[str]) -> int:
    """The lines' size in UTF-8 (their length when all are ASCII: the usual case, in C)."""
    if all(map(str.isascii, lines)):
        return sum(map(len, lines))
    return sum(len(line.encode("utf-8", "replace")) for line in lines)


@dataclass(frozen=True, slots=True)
class LogPage:
    lines: tuple[str, ...]
    offset: int
    end: int
    dropped: int
    ended: bool

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.lines)


@dataclass(slots=True)
class _Log:
    run_id: str
    end: int = 0  # lines received: the next line's offset
    dropped: int = 0  # a multiple of C
    chunk_bytes: list[int] = field(default_factory=list)  # of the chunks kept, from chunk dropped // C
    base: int = 0  # the offset of lines[0], a chunk boundary: what is below it is stored
    lines: list[str] = field(default_factory=list)
    stored: int = 0  # lines stored
    deleted: list[int] = field(default_factory=list)  # chunks dropped, still to delete from the store
    dirty: bool = False
    ended: bool = False  # the run ended: forgotten once everything is stored
    # A run restored at a take-over: what is stored of its log is being read (set: read);
    # meanwhile its lines wait in ``early``.
    loading: asyncio.Event | None = None
    early: list[tuple[int | None, list[str], bool]] = field(default_factory=list)

    def meta(self) -> LogMeta:
        return LogMeta(self.run_id, self.end, self.dropped, tuple(self.chunk_bytes))


class RunLogs:
    def __init__(self, state: State) -> None:
        self._state = state
        self._logs: dict[str, _Log] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        # Active runs restored at a take-over whose stored log has not been read yet.
        self._unread: set[str] = set()
        # Told of lines that were new once a restored run's log was read ((run id, lines), the tail).
        self.tailed: Callable[[str, list[str]], None] = lambda run_id, lines: None

    def reset(self) -> None:
        self._logs = {}
        self._unread = set()
        for event in self._changed.values():
            event.set()  # followers look again (and find this controller no longer leads)
        self._changed = {}

    # ------------------------------------------------------------ from workers

    def append(
        self, run_id: str, offset: int | None, lines: Iterable[str], resend: bool = False
    ) -> list[str]:
        """Lines of ``run_id`` from ``offset`` (None: after the last); returns those that were new.

        Lines past a gap are not taken: an event was lost on the way, and the
        worker sends again from its oldest unstored line (``resend``); what is
        missing below a resend's offset, the worker no longer had (counted lost).
        """
        batch = lines if isinstance(lines, list) else list(lines)
        if not batch:
            return []
        entry = self._logs.get(run_id)
        if entry is None:
            entry = self._logs[run_id] = _Log(run_id)
            if run_id in self._unread:  # read what is stored first, off the take-over's path
                self._unread.discard(run_id)
                entry.loading = asyncio.Event()
                self._state.spawn(self._read_stored(entry, entry.loading))
        if entry.loading is not None:
            entry.early.append((offset, batch, resend))
            return []
        if offset is None:
            offset = entry.end
        if offset > entry.end and not resend:
            return []
        if offset > entry.end:  # lines the worker could not keep: placeholders keep offsets exact
            limit = self._state.config.log_max_lines + C
            self._state.metrics.log_lines_lost += offset - entry.end
            if offset - entry.end > limit:
                self._skip_to(entry, offset - limit)
            batch = [LOST_LINE] * (offset - entry.end) + batch
        elif offset < entry.end:
            batch = batch[entry.end - offset :]
        if not batch:
            return []
        limit = v.MAX_LOG_LINE_LENGTH
        new = batch if max(map(len, batch)) <= limit else [line[:limit] for line in batch]
        # Bytes by chunk, a chunk's worth of lines at a time (an ASCII line's length is its size).
        at = 0
        while at < len(new):
            segment = new[at : at + C - entry.end % C]
            number = entry.end // C - entry.dropped // C
            if number == len(entry.chunk_bytes):
                entry.chunk_bytes.append(0)
            entry.chunk_bytes[number] += len(segment) + utf8_size(segment)
            entry.end += len(segment)
            at += len(segment)
        entry.lines.extend(new)
        self._state.metrics.log_lines_received += len(new)
        self._apply_cap(entry)
        entry.dirty = True
        return new

    def _skip_to(self, entry: _Log, offset: int) -> None:
        """Everything below the chunk of ``offset`` is gone (a gap past the cap)."""
        boundary = offset // C * C
        while entry.dropped < boundary and entry.chunk_bytes:
            self._drop_first(entry)
        entry.end = entry.base = entry.dropped = max(entry.dropped, boundary)
        entry.stored = max(entry.stored, entry.end)
        entry.lines = []
        entry.chunk_bytes = []

    def _apply_cap(self, entry: _Log) -> None:
        config = self._state.config
        while entry.dropped + C <= entry.end and (
            entry.end - entry.dropped > config.log_max_lines or sum(entry.chunk_bytes) > config.log_max_bytes
        ):
            self._drop_first(entry)

    def _drop_first(self, entry: _Log) -> None:
        number = entry.dropped // C
        entry.deleted.append(number)
        entry.chunk_bytes.pop(0)
        entry.dropped += C
        self._state.metrics.log_lines_dropped += C
        if entry.base < entry.dropped:
            entry.lines = entry.lines[entry.dropped - entry.base :]
            entry.base = entry.dropped
            entry.stored = max(entry.stored, entry.dropped)

    async def caught_up(self, run_id: str, offset: int, timeout_s: float = 2.0) -> None:
        """Until the lines of ``run_id`` below ``offset`` have come (at most ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while offset > 0 and loop.time() < deadline:
            entry = self._logs.get(run_id)
            if entry is not None and entry.loading is None and entry.end >= offset:
                return
            await asyncio.sleep(0.01)

    def counts(self, run_id: str) -> tuple[int, int]:
        """The lines ``run_id`` logged and dropped, as received (0, 0 while unknown)."""
        entry = self._logs.get(run_id)
        return (entry.end, entry.dropped) if entry is not None and entry.loading is None else (0, 0)

    def stored_offsets(self, run_ids: Iterable[str]) -> dict[str, int]:
        """For a heartbeat's reply: how much of each run's log is stored."""
        return {
            run_id: entry.stored
            for run_id in run_ids
            if (entry := self._logs.get(run_id)) is not None and entry.loading is None
        }

    def ended(self, run: Run) -> None:
        """The run has ended: its log is stored by the next flush, then forgotten here."""
        self._unread.discard(run.run_id)
        entry = self._logs.get(run.run_id)
        if entry is not None:
            entry.ended = True
            if not entry.dirty and entry.loading is None:  # all stored already (the end flushed it)
                del self._logs[run.run_id]
        self._wake(run.run_id)

    def restore(self, run_ids: Iterable[str]) -> None:
        """At a take-over: the active runs, whose stored logs are read when their lines come."""
        self._unread = set(run_ids)

    async def _read_stored(self, entry: _Log, loading: asyncio.Event) -> None:
        store = self._state.store
        while True:
            try:
                meta = await store.get_log_meta(entry.run_id)
                base = meta.end // C * C if meta is not None else 0
                partial = (
                    await store.read_log_chunks(entry.run_id, [base // C]) if meta and meta.end > base else []
                )
                break
            except Exception as error:  # the store is down: the lines wait, the worker keeps them
                log.warning("reading the stored log of run %s failed: %r", entry.run_id, error)
                await asyncio.sleep(0.5)
        if meta is not None:
            entry.end, entry.dropped, entry.stored, entry.base = meta.end, meta.dropped, meta.end, base
            entry.chunk_bytes = list(meta.chunk_bytes)
            entry.lines = list(partial[0].lines) if partial else []
        early, entry.early, entry.loading = entry.early, [], None
        loading.set()
        if entry.lines:
            self.tailed(entry.run_id, entry.lines[-v.LOG_TAIL_LINES :])
        for offset, lines, resend in early:
            self.tailed(entry.run_id, self.append(entry.run_id, offset, lines, resend))
        if entry.ended and not entry.dirty and self._logs.get(entry.run_id) is entry:
            del self._logs[entry.run_id]

    # ------------------------------------------------------------ to the store

    async def flush(self, run_ids: Iterable[str] | None = None) -> None:
        """Store what is not yet stored (of ``run_ids``, else of every run), whole."""
        wanted = set(run_ids) if run_ids is not None else None
        for run_id in wanted or ():
            entry = self._logs.get(run_id)
            if entry is not None and entry.loading is not None:
                await entry.loading.wait()  # its stored log is being read: then its lines are taken
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            async with self._lock:
                more = await self._flush_once(wanted)
            if not more:
                return
            # Between slices the loop is left to the rest for as long as the slice took (the
            # embedded store never yields): storing a burst takes at most half of it, and a
            # launch's turns each wait behind one short slice, not a train of them.
            await asyncio.sleep(loop.time() - began)

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._state.config.log_flush_interval_s)
            try:
                await self.flush()
            except Exception as error:  # the store is down: the lines stay here, tried again
                log.warning("storing run logs failed: %r", error)

    async def _flush_once(self, wanted: set[str] | None) -> bool:
        """One slice; True when more is left to store."""
        write = LogWrite()
        done: list[tuple[_Log, int]] = []
        budget = _FLUSH_CHUNKS
        more = False
        for entry in list(self._logs.values()):
            if not entry.dirty or entry.loading or (wanted is not None and entry.run_id not in wanted):
                continue
            if budget <= 0:
                more = True
                break
            first = max(entry.stored, entry.dropped) // C
            last = -(-entry.end // C)  # exclusive
            if last - first > budget:
                last, more = first + budget, True
            budget -= max(last - first, 1)
            for number in range(first, last):
                start = number * C - entry.base
                write.chunks.append(LogChunk(entry.run_id, number, tuple(entry.lines[start : start + C])))
            upto = min(entry.end, last * C)
            meta = entry.meta()
            write.metas.append(
                LogMeta(entry.run_id, upto, meta.dropped, meta.chunk_bytes[: last - meta.dropped // C])
            )
            write.dropped.extend((entry.run_id, number) for number in entry.deleted)
            done.append((entry, upto))
        if not write:
            return False
        deleted = {entry.run_id: list(entry.deleted) for entry, _ in done}
        await self._state.store.write_logs(write, self._state.term)
        self._state.metrics.log_lines_stored += sum(
            upto - entry.stored for entry, upto in done if upto > entry.stored
        )
        for entry, upto in done:
            entry.deleted = [n for n in entry.deleted if n not in deleted[entry.run_id]]
            entry.stored = max(entry.stored, upto)
            keep_from = max(entry.stored // C * C, entry.dropped)
            if keep_from > entry.base:
                entry.lines = entry.lines[keep_from - entry.base :]
                entry.base = keep_from
            entry.dirty = entry.stored < entry.end or bool(entry.deleted)
            self._wake(entry.run_id)  # followers: more is stored
            if entry.ended and not entry.dirty and self._logs.get(entry.run_id) is entry:
                del self._logs[entry.run_id]
        return more

    # ------------------------------------------------------------ reads

    async def page(self, run: Run, offset: int, limit: int) -> LogPage:
        """Lines of ``run``'s log from ``offset``, at most ``limit`` (0: the default)."""
        if limit < 0 or limit > MAX_PAGE_LINES:
            raise InvalidArgument(f"limit must be within 0..{MAX_PAGE_LINES} lines, got {limit}")
        limit = limit or DEFAULT_PAGE_LINES
        entry = self._logs.get(run.run_id)
        if entry is not None and entry.loading is not None:
            entry = None  # what is stored of it is being read: the store says as much
        if entry is not None:
            # Stored lines only, as every state is persisted before anyone hears of it: an offset
            # given out here is never past what a new leader has.
            end, dropped, base, memory = entry.stored, entry.dropped, entry.base, entry.lines
        else:
            meta = await self._state.from_store(self._state.store.get_log_meta(run.run_id))
            end, dropped = (meta.end, meta.dropped) if meta is not None else (0, 0)
            base, memory = end, []
        ended = run.state.is_end and (entry is None or entry.ended)
        if offset < 0 or offset > end:
            raise InvalidArgument(
                f"offset {offset} is out of range: run {run.run_id!r} has logged {end} lines "
                f"(offsets 0..{end})"
            )
        start = max(offset, dropped)
        stop = min(end, start + limit)
        lines: list[str] = []
        if start < min(stop, base):
            numbers = list(range(start // C, (min(stop, base) - 1) // C + 1))
            chunks = await self._state.from_store(self._state.store.read_log_chunks(run.run_id, numbers))
            at = start
            for chunk in chunks:
                if chunk.number * C > at:
                    break  # dropped meanwhile: stop at the gap, the next page starts after it
                lines.extend(chunk.lines[at - chunk.number * C : min(stop, base) - chunk.number * C])
                at = chunk.number * C + len(chunk.lines)
            if at < min(stop, base):
                return self._fit(LogPage(tuple(lines), start, end, dropped, False))
        if stop > base:
            lines.extend(memory[max(start, base) - base : stop - base])
        return self._fit(LogPage(tuple(lines), start, end, dropped, ended and start + len(lines) == end))

    @staticmethod
    def _fit(page: LogPage) -> LogPage:
        """The page, cut to MAX_PAGE_BYTES (8 bytes a line for the framing)."""
        if utf8_size(list(page.lines)) + 8 * len(page.lines) <= MAX_PAGE_BYTES:
            return page
        used = 0
        for count, line in enumerate(page.lines):
            used += (len(line) if line.isascii() else len(line.encode("utf-8", "replace"))) + 8
            if used > MAX_PAGE_BYTES and count:
                return LogPage(page.lines[:count], page.offset, page.end, page.dropped, False)
        return page

    async def wait(self, run_id: str, timeout_s: float = 1.0) -> None:
        """Until ``run_id``'s log changes or its run ends (or ``timeout_s``)."""
        event = self._changed.get(run_id)
        if event is None:
            event = self._changed[run_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def _wake(self, run_id: str) -> None:
        event = self._changed.pop(run_id, None)
        if event is not None:
            event.set()

    async def follow(self, get_run: Callable[[], Awaitable[Run]], offset: int) -> AsyncIterator[LogPage]:
        """The log from ``offset``: stored lines, then live ones; ends once the run has ended
        and every line was given. ``get_run``: the run as it is now (raises when it is gone)."""
        while True:
            self._state.require_leader()
            run = await get_run()
            page = await self.page(run, offset, MAX_PAGE_LINES)
            if page.lines:
                offset = page.next_offset
                yield page
                continue
            if page.ended:
                return
            if page.offset > offset:
                offset = page.offset  # the lines between were dropped past the cap
            await self.wait(run.run_id)
