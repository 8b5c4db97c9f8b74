"""The embedded store: one SQLite file, no server to install.

For a single machine (the default of ``shards controller``). It runs on the
event loop thread: each call is a local transaction of well under a
millisecond, cheaper than a hop to a thread. WAL mode with
``synchronous=NORMAL`` makes a committed transaction survive a crash of the
controller (not of the machine's power: use ``synchronous=FULL`` via
``durable=True`` for that, at a cost per write).

The fence is exact here: a write and the lease check share one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shards._aio import cancel_and_wait
from shards.models import ProcessRecord, Run, WorkerInfo
from shards.states import ACTIVE_STATES
from shards_controller.store.base import JournalEntry, Lease, StaleTerm, WriteBatch
from shards_controller.store.documents import (
    Doc,
    journal_from_doc,
    journal_to_doc,
    record_from_doc,
    record_to_doc,
    run_from_doc,
    run_to_doc,
    worker_from_doc,
    worker_to_doc,
)
from shards_controller.store.embedded_logs import LOGS_SCHEMA, EmbeddedRunLogs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    scope_id TEXT NOT NULL, process_id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (scope_id, process_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, scope_id TEXT NOT NULL, process_id TEXT NOT NULL,
    created_ts REAL NOT NULL, active INTEGER NOT NULL, idempotency_key TEXT, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_process ON runs (scope_id, process_id, created_ts);
CREATE INDEX IF NOT EXISTS runs_by_scope ON runs (scope_id, created_ts);
CREATE INDEX IF NOT EXISTS runs_active ON runs (active) WHERE active = 1;
CREATE UNIQUE INDEX IF NOT EXISTS runs_by_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS journal (revision INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder_id TEXT NOT NULL, address TEXT NOT NULL, term INTEGER NOT NULL, expires_ts REAL NOT NULL
);
"""


def _encode(doc: Doc) -> str:
    # orjson writes what json.dumps(separators=(",", ":")) with isoformat()
    # dates wrote, ten times faster: it is most of a launch's store write.
    return orjson.dumps(doc).decode()


class EmbeddedStore(EmbeddedRunLogs):
    """SQLite-backed ``Store``. ``path`` may be ``":memory:"`` for tests."""

    remote_lookups = False  # a read is a few microseconds: a launch's key is always looked up

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self._path = str(path)
        self._durable = durable
        self._db: sqlite3.Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        db.executescript(LOGS_SCHEMA)
        self._db = db
        if self._path != ":memory:":
            # SQLite checkpoints the WAL inside whichever commit crosses its
            # threshold, on the event loop (the p99 of a write went from
            # 0.3 ms to 5 ms). A thread does it instead, with its own connection.
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = asyncio.create_task(self._checkpoint_periodically(), name="wal-checkpoint")

    async def _checkpoint_periodically(self, interval_s: float = 1.0) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        checkpoint: asyncio.Future[Any] | None = None
        try:
            while True:
                await asyncio.sleep(interval_s)
                # PASSIVE: copies what it can without blocking the writer.
                checkpoint = asyncio.ensure_future(
                    asyncio.to_thread(connection.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                )
                await asyncio.shield(checkpoint)
        finally:
            # Cancelling the wait does not stop the thread: closing the
            # connection under a running checkpoint crashes the process.
            if checkpoint is not None:
                with contextlib.suppress(Exception):
                    await checkpoint
            connection.close()

    async def close(self) -> None:
        await cancel_and_wait([self._checkpointer])
        self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _transaction(self, term: int | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, fenced by ``term`` when given: committed, or rolled back on any error."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if term is not None:
                self._check_term(term)
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- leadership

    async def acquire_lease(self, holder_id: str, address: str, ttl: timedelta) -> Lease | None:
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT holder_id, term, expires_ts FROM lease WHERE id = 1").fetchone()
            if row is None:
                term = 1
            elif row[0] == holder_id and row[2] > now:
                term = row[1]
            elif row[2] <= now:
                term = row[1] + 1
            else:
                return None  # another holder's lease is still valid
            expires = now + ttl.total_seconds()
            db.execute(
                "INSERT INTO lease (id, holder_id, address, term, expires_ts) VALUES (1, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET holder_id = excluded.holder_id, address = excluded.address, "
                "term = excluded.term, expires_ts = excluded.expires_ts",
                (holder_id, address, term, expires),
            )
        return Lease(holder_id, address, term, datetime.fromtimestamp(expires, UTC))

    async def renew_lease(self, holder_id: str, address: str, ttl: timedelta, term: int) -> Lease | None:
        expires = time.time() + ttl.total_seconds()
        with self._transaction() as db:
            renewed = db.execute(
                "UPDATE lease SET address = ?, expires_ts = ? WHERE id = 1 AND holder_id = ? AND term = ?",
                (address, expires, holder_id, term),
            ).rowcount
        if not renewed:
            return None
        return Lease(holder_id, address, term, datetime.fromtimestamp(expires, UTC))

    async def read_lease(self) -> Lease | None:
        row = self.db.execute(
            "SELECT holder_id, address, term, expires_ts FROM lease WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        return Lease(row[0], row[1], row[2], datetime.fromtimestamp(row[3], UTC))

    async def release_lease(self, holder_id: str) -> None:
        self.db.execute("UPDATE lease SET expires_ts = 0 WHERE id = 1 AND holder_id = ?", (holder_id,))

    # -- records, runs, journal

    def _check_term(self, term: int) -> None:
        row = self.db.execute("SELECT term FROM lease WHERE id = 1").fetchone()
        if row is not None and row[0] > term:
            raise StaleTerm(f"term {term} is stale: term {row[0]} leads")

    async def write(self, batch: WriteBatch, term: int) -> None:
        if not batch:
            return
        with self._transaction(term) as db:
            if batch.records:
                db.executemany(
                    "INSERT OR REPLACE INTO records (scope_id, process_id, doc) VALUES (?, ?, ?)",
                    [(r.scope_id, r.process_id, _encode(record_to_doc(r))) for r in batch.records],
                )
            if batch.removed:
                db.executemany("DELETE FROM records WHERE scope_id = ? AND process_id = ?", batch.removed)
            if batch.runs:
                # An upsert on run_id only: a run whose idempotency key belongs to
                # another run fails (IntegrityError) instead of replacing that run.
                db.executemany(
                    "INSERT INTO runs "
                    "(run_id, scope_id, process_id, created_ts, active, idempotency_key, doc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                    "active = excluded.active, doc = excluded.doc",
                    [_run_row(run) for run in batch.runs],
                )
            if batch.journal:
                db.executemany(
                    "INSERT OR REPLACE INTO journal (revision, doc) VALUES (?, ?)",
                    [(entry.revision, _encode(journal_to_doc(entry))) for entry in batch.journal],
                )

    async def load_records(self) -> list[ProcessRecord]:
        rows = self.db.execute("SELECT doc FROM records").fetchall()
        return [record_from_doc(orjson.loads(row[0])) for row in rows]

    async def load_active_runs(self) -> list[Run]:
        rows = self.db.execute("SELECT doc FROM runs WHERE active = 1").fetchall()
        return [run_from_doc(orjson.loads(row[0])) for row in rows]

    async def get_run(self, run_id: str) -> Run | None:
        row = self.db.execute("SELECT doc FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return run_from_doc(orjson.loads(row[0])) if row else None

    async def find_run_by_idempotency_key(self, key: str) -> Run | None:
        row = self.db.execute("SELECT doc FROM runs WHERE idempotency_key = ?", (key,)).fetchone()
        return run_from_doc(orjson.loads(row[0])) if row else None

    async def list_runs(self, scope_id: str, process_id: str, limit: int, after: str = "") -> list[Run]:
        where, params = "scope_id = ?", [scope_id]
        if process_id:
            where += " AND process_id = ?"
            params.append(process_id)
        if after:
            row = self.db.execute("SELECT created_ts FROM runs WHERE run_id = ?", (after,)).fetchone()
            if row is None:
                return []
            where += " AND (created_ts < ? OR (created_ts = ? AND run_id < ?))"
            params += [row[0], row[0], after]
        rows = self.db.execute(
            f"SELECT doc FROM runs WHERE {where} ORDER BY created_ts DESC, run_id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [run_from_doc(orjson.loads(row[0])) for row in rows]

    async def journal_since(self, revision: int, limit: int) -> list[JournalEntry]:
        rows = self.db.execute(
            "SELECT doc FROM journal WHERE revision > ? ORDER BY revision LIMIT ?", (revision, limit)
        ).fetchall()
        return [journal_from_doc(orjson.loads(row[0])) for row in rows]

    async def max_revision(self) -> int:
        journal = self.db.execute("SELECT MAX(revision) FROM journal").fetchone()[0] or 0
        records = self.db.execute(
            "SELECT MAX(CAST(json_extract(doc, '$.revision') AS INTEGER)) FROM records"
        ).fetchone()[0]
        return max(journal, records or 0)

    async def journal_floor(self) -> int:
        oldest = self.db.execute("SELECT MIN(revision) FROM journal").fetchone()[0]
        if oldest is None:  # nothing journaled, or everything pruned: none of it can be replayed
            return await self.max_revision()
        return int(oldest) - 1

    async def prune_journal(self, keep_last: int) -> None:
        self.db.execute(
            "DELETE FROM journal WHERE revision <= "
            "(SELECT revision FROM journal ORDER BY revision DESC LIMIT 1 OFFSET ?)",
            (keep_last,),
        )

    # -- workers

    async def save_worker(self, worker: WorkerInfo, term: int) -> None:
        with self._transaction(term) as db:
            db.execute(
                "INSERT OR REPLACE INTO workers (worker_id, doc) VALUES (?, ?)",
                (worker.worker_id, _encode(worker_to_doc(worker))),
            )

    async def load_workers(self) -> list[WorkerInfo]:
        rows = self.db.execute("SELECT doc FROM workers").fetchall()
        return [worker_from_doc(orjson.loads(row[0])) for row in rows]

    async def delete_worker(self, worker_id: str, term: int) -> None:
        with self._transaction(term) as db:
            db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))


def _run_row(run: Run) -> tuple[str, str, str, float, int, str | None, str]:
    created = run.created_at.timestamp() if run.created_at else time.time()
    return (
        run.run_id,
        run.scope_id,
        run.process_id,
        created,
        1 if run.state in ACTIVE_STATES else 0,
        run.idempotency_key or None,
        _encode(run_to_doc(run)),
    )
