"""The store contract: what the controller needs from its system of record.

The controller keeps current state in memory and uses the store to survive a
restart or a change of leader. Two implementations honour this contract and
run the same contract tests: ``EmbeddedStore`` (SQLite, one machine, nothing to
install) and ``MongoStore`` (MongoDB, for failover).

Fencing: every write carries the writer's lease term. A store refuses (with
``StaleTerm``) a write from a term lower than the newest term it has seen, so a
deposed leader that still runs cannot overwrite what the new leader wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from shards.models import ProcessRecord, Run, WorkerInfo


class StaleTerm(Exception):
    """A write was fenced off: a controller with a newer term leads now."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Who leads, since which term, and until when unless renewed."""

    holder_id: str
    address: str
    term: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One persisted state change; ``record`` is None when the record was removed."""

    revision: int
    scope_id: str
    process_id: str
    record: ProcessRecord | None


@dataclass(slots=True)
class WriteBatch:
    """Writes that go to the store in one round trip (one transaction where the store has them)."""

    records: list[ProcessRecord] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.records or self.removed or self.runs or self.journal)


# A run's log is stored in chunks: chunk n holds the lines at offsets
# n * LOG_CHUNK_LINES onwards (the last one may be partial, and is rewritten as
# it fills). Past the log's cap, the oldest chunks go whole.
LOG_CHUNK_LINES = 256


@dataclass(frozen=True, slots=True)
class LogMeta:
    """What is stored of one run's log."""

    run_id: str
    end: int  # the lines the run logged (the next line's offset)
    dropped: int  # the oldest lines dropped past the cap (a whole number of chunks)
    chunk_bytes: tuple[int, ...] = ()  # the bytes of each chunk kept, oldest first

    @property
    def bytes(self) -> int:
        return sum(self.chunk_bytes)


@dataclass(frozen=True, slots=True)
class LogChunk:
    run_id: str
    number: int
    lines: tuple[str, ...]


@dataclass(slots=True)
class LogWrite:
    """Log chunks (new, or a partial one rewritten), their runs' metas, and chunks dropped."""

    chunks: list[LogChunk] = field(default_factory=list)
    metas: list[LogMeta] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (run id, chunk number)

    def __bool__(self) -> bool:
        return bool(self.chunks or self.metas or self.dropped)


class Store(Protocol):
    """The system of record of a controller. All methods are coroutines."""

    # Whether each read is a round trip to a server (worth skipping when the answer
    # is known: a launch's key its client vouches is new).
    remote_lookups: bool

    async def open(self) -> None:
        """Connect and create tables or indexes. Idempotent."""

    async def close(self) -> None: ...

    # -- leadership
    async def acquire_lease(self, holder_id: str, address: str, ttl: timedelta) -> Lease | None:
        """Take the lease when it is free or expired, renew it when ``holder_id`` holds it.

        Returns the lease now held by ``holder_id``, or None when another
        holder's lease is still valid. Taking it from another holder (or from
        nobody) increments the term; renewing keeps it.
        """

    async def renew_lease(self, holder_id: str, address: str, ttl: timedelta, term: int) -> Lease | None:
        """Renew the lease of the leader of ``term``, even if it ran out meanwhile.

        Only while the lease still names ``holder_id`` at ``term``: then nobody
        led in between, and the leader (which never stopped leading) keeps its
        term. A leader whose event loop was too busy to renew in time must not
        take a new term against itself (it would fence off its own writes and
        have to step down and take over again). None when another holder took
        the lease, or a later term exists.
        """

    async def read_lease(self) -> Lease | None: ...

    async def release_lease(self, holder_id: str) -> None:
        """Expire the lease now if ``holder_id`` holds it (a clean shutdown)."""

    # -- process records, runs and the journal
    async def write(self, batch: WriteBatch, term: int) -> None:
        """Apply a batch, fenced by ``term``. Raises StaleTerm when fenced off."""

    async def load_records(self) -> list[ProcessRecord]: ...

    async def load_active_runs(self) -> list[Run]:
        """Runs in an active state (scheduled, running, stop_requested, stopping)."""

    async def get_run(self, run_id: str) -> Run | None: ...

    async def find_run_by_idempotency_key(self, key: str) -> Run | None: ...

    async def list_runs(self, scope_id: str, process_id: str, limit: int, after: str = "") -> list[Run]:
        """Newest first (ties by run id, highest first); every process of the scope when
        ``process_id`` is empty. ``after``: a run id of an earlier page: only runs that come
        after it in that order (none if there is no such run)."""

    async def journal_since(self, revision: int, limit: int) -> list[JournalEntry]:
        """Entries with a revision above ``revision``, oldest first."""

    async def max_revision(self) -> int:
        """The highest revision in records or journal (0 for an empty store)."""

    async def journal_floor(self) -> int:
        """A revision such that every journal entry above it is still stored (0 if none was pruned)."""

    async def prune_journal(self, keep_last: int) -> None:
        """Drop journal entries older than the newest ``keep_last`` revisions (at most
        ``keep_last`` entries stay; fewer where a revision was progress, never journaled)."""

    # -- run logs and run retention
    async def write_logs(self, write: LogWrite, term: int) -> None:
        """Store log chunks (replacing a chunk of the same run and number) and metas,
        delete dropped chunks; fenced by ``term``. Every document by its key, no scan."""

    async def get_log_meta(self, run_id: str) -> LogMeta | None: ...

    async def read_log_chunks(self, run_id: str, numbers: list[int]) -> list[LogChunk]:
        """The chunks of ``numbers`` that exist, in the order of ``numbers``."""

    async def ended_runs_before(self, created_before: datetime, limit: int, after: str = "") -> list[Run]:
        """Up to ``limit`` ended runs created before ``created_before``, by run id, those after the
        run id ``after`` (a page's last: the next page)."""

    async def delete_runs(self, runs: list[Run], term: int) -> None:
        """Delete ended runs, their idempotency keys and their logs; fenced by ``term``."""

    # -- workers
    async def save_worker(self, worker: WorkerInfo, term: int) -> None: ...

    async def load_workers(self) -> list[WorkerInfo]: ...

    async def delete_worker(self, worker_id: str, term: int) -> None: ...
