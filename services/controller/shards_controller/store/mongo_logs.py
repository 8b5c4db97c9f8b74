"""The MongoDB store's run logs and run retention (a part of ``MongoStore``).

Two collections, every document keyed by ``_id`` (so FerretDB 1.24 never scans
on the hot path, see ``store.mongo``):

- ``run_logs``: one per run, ``_id`` the run id: its meta (``end``, ``dropped``,
  ``chunk_bytes``).
- ``run_log_chunks``: one per chunk of 256 lines, ``_id`` the run id, ``/`` and
  the chunk number zero-padded to 8 digits (``"r-1/00000003"``), the lines as
  an array. Never one document per line.

A log write is upserts by ``_id`` (the partial last chunk is rewritten as it
fills) and deletes by ``_id`` of the chunks dropped past the cap, fenced like
every write. Reading a page is ``find_one`` by ``_id`` per chunk, concurrently.
Only the retention loop's ``ended_runs_before`` is a query (a scan on
FerretDB: once a minute, off the hot path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from shards.models import Run
from shards_controller.store.base import LOG_CHUNK_LINES, LogChunk, LogMeta, LogWrite
from shards_controller.store.documents import Doc, run_from_doc
from shards_controller.store.mongo_commands import Writer


def chunk_id(run_id: str, number: int) -> str:
    return f"{run_id}/{number:08d}"


class _Fenced(Protocol):
    @property
    def db(self) -> AsyncDatabase[Doc]: ...

    @property
    def _write(self) -> Writer: ...

    async def _fenced(self, term: int, writes: list[Coroutine[Any, Any, None]]) -> None: ...

    async def get_log_meta(self, run_id: str) -> LogMeta | None: ...


class MongoRunLogs:
    async def write_logs(self: _Fenced, write: LogWrite, term: int) -> None:
        if not write:
            return
        db, writer = self.db, self._write
        writes: list[Coroutine[Any, Any, None]] = []
        if write.chunks:
            docs = [
                {"_id": chunk_id(c.run_id, c.number), "term": term, "lines": list(c.lines)}
                for c in write.chunks
            ]
            writes.append(writer.upsert(db.run_log_chunks, docs, term))
        if write.metas:
            metas = [
                {
                    "_id": m.run_id,
                    "term": term,
                    "end": m.end,
                    "dropped": m.dropped,
                    "chunk_bytes": list(m.chunk_bytes),
                }
                for m in write.metas
            ]
            writes.append(writer.upsert(db.run_logs, metas, term))
        if write.dropped:
            ids = [chunk_id(run_id, number) for run_id, number in write.dropped]
            writes.append(writer.delete(db.run_log_chunks, ids, term))
        await self._fenced(term, writes)

    async def get_log_meta(self: _Fenced, run_id: str) -> LogMeta | None:
        doc = await self.db.run_logs.find_one({"_id": run_id})
        if doc is None:
            return None
        return LogMeta(
            run_id, int(doc["end"]), int(doc["dropped"]), tuple(int(b) for b in doc["chunk_bytes"])
        )

    async def read_log_chunks(self: _Fenced, run_id: str, numbers: list[int]) -> list[LogChunk]:
        collection = self.db.run_log_chunks
        docs = await asyncio.gather(*(collection.find_one({"_id": chunk_id(run_id, n)}) for n in numbers))
        return [LogChunk(run_id, n, tuple(doc["lines"])) for n, doc in zip(numbers, docs, strict=True) if doc]

    async def ended_runs_before(
        self: _Fenced, created_before: datetime, limit: int, after: str = ""
    ) -> list[Run]:
        if limit <= 0:
            return []
        query: Doc = {"created_ts": {"$lt": created_before}, "active": {"$exists": False}}
        if after:
            query["_id"] = {"$gt": after}
        cursor = self.db.runs.find(query).sort("_id", ASCENDING).limit(limit)
        return [run_from_doc(doc) async for doc in cursor]

    async def delete_runs(self: _Fenced, runs: list[Run], term: int) -> None:
        ended = [run for run in runs if not run.state.is_active]
        if not ended:
            return
        db, writer = self.db, self._write
        metas = await asyncio.gather(*(self.get_log_meta(run.run_id) for run in ended))
        chunk_ids = [
            chunk_id(meta.run_id, number)
            for meta in metas
            if meta is not None
            for number in range(meta.dropped // LOG_CHUNK_LINES, -(-meta.end // LOG_CHUNK_LINES))
        ]
        writes: list[Coroutine[Any, Any, None]] = [
            writer.delete(db.runs, [run.run_id for run in ended], term)
        ]
        keys = [run.idempotency_key for run in ended if run.idempotency_key]
        if keys:
            writes.append(writer.delete(db.keys, keys, term))
        if chunk_ids:
            writes.append(writer.delete(db.run_log_chunks, chunk_ids, term))
        writes.append(writer.delete(db.run_logs, [meta.run_id for meta in metas if meta is not None], term))
        await self._fenced(term, writes)
