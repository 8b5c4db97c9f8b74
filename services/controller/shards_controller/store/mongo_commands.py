"""The MongoDB store's documents and write commands, each keyed by ``_id`` (see ``store.mongo``).

Writes go out as raw ``update``/``delete`` commands, one per collection and
batch on MongoDB, one per 4 statements (4 at once) on FerretDB, whose 1.24
deadlocks on a command of many (``mongo_schema.FERRETDB_LIMITS``), rather
than through ``bulk_write``: FerretDB's reply to a failed update
has no ``nModified`` (pymongo's bulk API fails on it), and it reports every
write error at index 0, so a refused write is explained by querying for the
newer document instead of trusting the index.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteConcernError, WriteError
from pymongo.write_concern import WriteConcern

from shards.models import ProcessRecord, Run
from shards.states import ProcessState
from shards_controller.store.base import JournalEntry, StaleTerm
from shards_controller.store.documents import Doc, journal_to_doc, record_to_doc, run_to_doc

if TYPE_CHECKING:
    from shards_controller.store.mongo_schema import WriteLimits

WRITE_CONCERN = WriteConcern(w="majority", j=True)
T = TypeVar("T")
DUPLICATE_KEY = 11000
# Well below the server's maxWriteBatchSize and 16 MiB command size for our documents.
OPS_PER_COMMAND = 1000


def record_id(scope_id: str, process_id: str) -> str:
    return json.dumps([scope_id, process_id], separators=(",", ":"))


def record_doc(record: ProcessRecord, term: int, fields: Doc | None = None) -> Doc:
    """``fields``: ``record_to_doc(record)`` when the caller has it already."""
    fields = fields if fields is not None else record_to_doc(record)
    return {"_id": record_id(record.scope_id, record.process_id), "term": term, **fields}


def run_doc(run: Run, term: int, now: datetime) -> Doc:
    doc = {"_id": run.run_id, "term": term, **run_to_doc(run)}
    if not run.idempotency_key:
        del doc["idempotency_key"]
    doc["created_ts"] = run.created_at or now
    if run.state.is_active:
        doc["active"] = True  # absent once ended: the sparse index holds active runs only
    return doc


def key_doc(run: Run, term: int) -> Doc:
    """The idempotency key's own document: ``_id`` is the (namespaced) key."""
    return {"_id": run.idempotency_key, "run_id": run.run_id, "term": term}


def likely_new_record(record: ProcessRecord) -> bool:
    """A record as a define writes it: idle, never run (a re-defined one looks so too)."""
    return record.state is ProcessState.IDLE and not record.run_id


async def all_answered(writes: Iterable[Awaitable[None]]) -> None:
    """Run ``writes`` at once; once every one has had its answer, raise the first error
    (StaleTerm before any other: a newer term leads, whatever else went wrong)."""
    writes = list(writes)
    if len(writes) == 1:
        # Most group commits: awaited here, not wrapped in a task, whose start waits for a
        # turn of the loop (1.0-1.5 ms p50 under sustained launches, before the insert left).
        await writes[0]
        return
    results = await asyncio.gather(*writes, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise next((e for e in errors if isinstance(e, StaleTerm)), errors[0])


def partition(items: Iterable[T], test: Callable[[T], bool]) -> tuple[list[T], list[T]]:
    """``items`` that pass ``test``, and the others, each in their order."""
    passed: list[T] = []
    failed: list[T] = []
    for item in items:
        (passed if test(item) else failed).append(item)
    return passed, failed


def journal_doc(entry: JournalEntry, term: int, record: Doc | None = None) -> Doc:
    """``record``: ``record_to_doc(entry.record)`` when the caller has it already."""
    return {"_id": entry.revision, "term": term, **journal_to_doc(entry, record)}


def record_and_journal_docs(
    records: list[ProcessRecord], journal: list[JournalEntry], term: int
) -> tuple[list[Doc], list[Doc]]:
    """The documents of a batch's records and journal entries, as ``record_doc`` and ``journal_doc``
    make them, each record converted once (an entry's record is most often the batch's record)."""
    converted: dict[int, Doc] = {}

    def fields(record: ProcessRecord) -> Doc:
        found = converted.get(id(record))
        if found is None:
            found = converted[id(record)] = record_to_doc(record)
        return found

    record_docs = [record_doc(record, term, fields(record)) for record in records]
    journal_docs = [
        journal_doc(entry, term, fields(entry.record) if entry.record is not None else None)
        for entry in journal
    ]
    return record_docs, journal_docs


def chunks(items: Sequence[Doc], size: int) -> Iterator[Sequence[Doc]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def by_id(doc_id: Any, term: int, term_in_filter: bool) -> Doc:
    """The filter of a write by ``_id``; fenced by the writer's term where the server serves that."""
    return {"_id": doc_id, "term": {"$lte": term}} if term_in_filter else {"_id": doc_id}


class Writer:
    """Fenced writes by ``_id`` on one database.

    ``term_in_filter``: each write's filter is ``{_id, term: {$lte: term}}``, so
    a document a newer term wrote is never overwritten (on a miss the upsert
    inserts a second ``_id``, and the duplicate key error becomes StaleTerm).
    False where that filter would not be served by the ``_id`` index
    (FerretDB's SQLite backend serves a filter on ``_id`` alone only).
    """

    def __init__(self, db: AsyncDatabase[Doc], term_in_filter: bool, limits: WriteLimits) -> None:
        self.db = db
        self.term_in_filter = term_in_filter
        self.limits = limits
        # Shared by every write of this store: the bound is on the server's connections.
        self._commands = asyncio.Semaphore(limits.commands_at_once)

    async def upsert(self, collection: AsyncCollection[Doc], docs: list[Doc], term: int) -> None:
        """Replace-or-insert ``docs`` by ``_id``: one ordered ``update`` command per chunk."""

        async def send(chunk: Sequence[Doc]) -> None:
            reply = await self.db.command(
                {
                    "update": collection.name,
                    "updates": [
                        {"q": by_id(doc["_id"], term, self.term_in_filter), "u": doc, "upsert": True}
                        for doc in chunk
                    ],
                    "ordered": True,
                    "writeConcern": WRITE_CONCERN.document,
                }
            )
            await self._raise_for_reply(collection, reply, [doc["_id"] for doc in chunk], term)

        await self._each(send, docs)

    async def _each(self, send: Callable[[Sequence[Doc]], Awaitable[None]], docs: Sequence[Doc]) -> None:
        """``send`` each chunk of ``docs`` (the documents are distinct: their order does not
        matter), at most ``limits.commands_at_once`` of this store's at a time; the first error
        is raised once every chunk has had its answer (StaleTerm before any other)."""

        async def bounded(chunk: Sequence[Doc]) -> None:
            async with self._commands:
                await send(chunk)

        parts = chunks(docs, self.limits.statements_per_command)
        await all_answered(bounded(chunk) for chunk in parts)

    async def insert_else_upsert(self, collection: AsyncCollection[Doc], docs: list[Doc], term: int) -> None:
        """Write documents that are most likely new (a launch's run, a define's records): one
        unordered insert, and only if one of them exists already (a requeued run, a re-define,
        a retried batch) the fenced upsert of all of them.

        An insert cannot overwrite what a newer term wrote (it fails on the duplicate instead),
        so it needs no per-document fence; the batch's lease fence still applies. On FerretDB
        an upsert is a find then a write per document: 2,000 new records took 2.1 s by upsert
        and 0.19 s by insert on its PostgreSQL backend, 27 s and 0.22 s on SQLite.
        """
        try:
            await collection.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            # Which of them exist is not told reliably (FerretDB puts every error at index 0):
            # upsert them all; the ones just inserted are written again, unchanged.
            await self.upsert(collection, docs, term)

    async def delete(self, collection: AsyncCollection[Doc], ids: list[Any], term: int) -> None:
        """Delete by ``_id``, one statement per document (a filter ``$in`` is not served by FerretDB)."""

        async def send(chunk: Sequence[Doc]) -> None:
            chunk_ids = [doc["_id"] for doc in chunk]
            reply = await self.db.command(
                {
                    "delete": collection.name,
                    "deletes": [
                        {"q": by_id(doc_id, term, self.term_in_filter), "limit": 1} for doc_id in chunk_ids
                    ],
                    "ordered": False,
                    "writeConcern": WRITE_CONCERN.document,
                }
            )
            await self._raise_for_reply(collection, reply, chunk_ids, term)
            if int(reply.get("n", 0)) < len(set(chunk_ids)) and self.term_in_filter:
                # Some were absent (fine) or written by a newer term (fenced off).
                await self.raise_if_newer(collection, chunk_ids, term)

        await self._each(send, [{"_id": doc_id} for doc_id in ids])

    async def insert_new(self, collection: AsyncCollection[Doc], docs: list[Doc]) -> None:
        """Insert documents that are never rewritten (journal entries): no fence per document.

        A retried batch finds its entries there already: those duplicates are fine.
        """
        try:
            await collection.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            others = [e for e in error.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
            if others:
                raise

    async def _raise_for_reply(
        self, collection: AsyncCollection[Doc], reply: Doc, ids: list[Any], term: int
    ) -> None:
        errors: list[Doc] = reply.get("writeErrors") or []
        if errors:
            first = errors[0]
            code = first.get("code")
            if code == DUPLICATE_KEY:
                await self.raise_if_newer(collection, ids, term)
                raise DuplicateKeyError(first.get("errmsg", "duplicate key"), code, first)
            raise WriteError(first.get("errmsg", "write error"), code, first)
        concern_error: Doc | None = reply.get("writeConcernError")
        if concern_error:
            raise WriteConcernError(
                concern_error.get("errmsg", "write concern error"), concern_error.get("code"), concern_error
            )

    async def raise_if_newer(self, collection: AsyncCollection[Doc], ids: list[Any], term: int) -> None:
        """StaleTerm when a newer term wrote one of ``ids`` (a scan on FerretDB: error paths only)."""
        newer = await collection.find_one({"_id": {"$in": ids}, "term": {"$gt": term}}, {"term": 1})
        if newer is not None:
            owner = f"{collection.name} {newer['_id']!r}"
            raise StaleTerm(f"term {term} is stale: {owner} was written by term {newer['term']}")
