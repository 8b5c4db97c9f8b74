"""The embedded store's run logs and run retention (a part of ``EmbeddedStore``).

Two tables: ``run_logs`` (one row per run: its meta) and ``run_log_chunks``
(one row per chunk of 256 lines, keyed by run and chunk number; the lines as
one JSON array). A write of logs is one transaction, fenced like every write.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime
from typing import Protocol

import orjson

from shards.models import Run
from shards_controller.store.base import LogChunk, LogMeta, LogWrite
from shards_controller.store.documents import run_from_doc

LOGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_logs (
    run_id TEXT PRIMARY KEY, end_offset INTEGER NOT NULL, dropped INTEGER NOT NULL, chunk_bytes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_log_chunks (
    run_id TEXT NOT NULL, number INTEGER NOT NULL, lines TEXT NOT NULL, PRIMARY KEY (run_id, number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_ended_by_age ON runs (created_ts) WHERE active = 0;
"""


class _Transactional(Protocol):
    @property
    def db(self) -> sqlite3.Connection: ...

    def _transaction(
        self, term: int | None = None
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...


class EmbeddedRunLogs:
    """Run logs and retention, on the store's one connection."""

    async def write_logs(self: _Transactional, write: LogWrite, term: int) -> None:
        if not write:
            return
        with self._transaction(term) as db:
            if write.dropped:
                db.executemany("DELETE FROM run_log_chunks WHERE run_id = ? AND number = ?", write.dropped)
            if write.chunks:
                db.executemany(
                    "INSERT OR REPLACE INTO run_log_chunks (run_id, number, lines) VALUES (?, ?, ?)",
                    [(c.run_id, c.number, orjson.dumps(c.lines).decode()) for c in write.chunks],
                )
            if write.metas:
                db.executemany(
                    "INSERT OR REPLACE INTO run_logs (run_id, end_offset, dropped, chunk_bytes) "
                    "VALUES (?, ?, ?, ?)",
                    [(m.run_id, m.end, m.dropped, orjson.dumps(m.chunk_bytes).decode()) for m in write.metas],
                )

    async def get_log_meta(self: _Transactional, run_id: str) -> LogMeta | None:
        row = self.db.execute(
            "SELECT end_offset, dropped, chunk_bytes FROM run_logs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return LogMeta(run_id, row[0], row[1], tuple(orjson.loads(row[2]))) if row else None

    async def read_log_chunks(self: _Transactional, run_id: str, numbers: list[int]) -> list[LogChunk]:
        found = {}
        for number in numbers:
            row = self.db.execute(
                "SELECT lines FROM run_log_chunks WHERE run_id = ? AND number = ?", (run_id, number)
            ).fetchone()
            if row is not None:
                found[number] = LogChunk(run_id, number, tuple(orjson.loads(row[0])))
        return [found[n] for n in numbers if n in found]

    async def ended_runs_before(
        self: _Transactional, created_before: datetime, limit: int, after: str = ""
    ) -> list[Run]:
        rows = self.db.execute(
            "SELECT doc FROM runs WHERE active = 0 AND created_ts < ? AND run_id > ? ORDER BY run_id LIMIT ?",
            (created_before.timestamp(), after, limit),
        ).fetchall()
        return [run_from_doc(orjson.loads(row[0])) for row in rows]

    async def delete_runs(self: _Transactional, runs: list[Run], term: int) -> None:
        ids = [(run.run_id,) for run in runs if not run.state.is_active]
        if not ids:
            return
        with self._transaction(term) as db:
            # Ended runs only: an active one is never pruned, whatever the caller asked.
            db.executemany("DELETE FROM runs WHERE run_id = ? AND active = 0", ids)
            db.executemany("DELETE FROM run_log_chunks WHERE run_id = ?", ids)
            db.executemany("DELETE FROM run_logs WHERE run_id = ?", ids)
