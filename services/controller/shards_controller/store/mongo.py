"""The MongoDB store: the system of record that lets controllers fail over.

Collections (in the database named by the URI, or ``database``, default
``shards``):

- ``records``: one document per process record, ``_id`` is the JSON array
  ``["<scope_id>", "<process_id>"]`` (unambiguous, and a plain string so an
  ``_id`` lookup is an exact index hit on every server).
- ``runs``: ``_id`` is the run id. ``created_ts`` (``created_at``, or the write
  time when a run has none, as the embedded store does) orders ``list_runs``.
  ``idempotency_key`` is left out when empty, so the unique sparse index only
  holds real keys.
- ``journal``: ``_id`` is the revision (the ``_id`` index is the unique index on
  revisions).
- ``workers``: ``_id`` is the worker id.
- ``lease``: the single document ``_id: "leader"``.

``open()`` creates the indexes that serve every query (it is idempotent).

Fencing. MongoDB has no multi-document transaction on FerretDB (and we do not
want one on MongoDB either: they need a replica set and cost round trips), so
the fence is two-fold:

1. Before a write, the lease's term is read; a writer whose term is lower than
   the lease's gets ``StaleTerm`` without writing anything.
2. Every document carries the ``term`` of its last writer, and every write is a
   conditional upsert ``{_id: ..., term: {$lte: term}}``. When a newer leader
   has written the document, the filter does not match, the upsert tries to
   insert a second document with the same ``_id`` and the server answers with
   a duplicate key error, which becomes ``StaleTerm``. A removal is a delete
   with the same filter. So a deposed leader that passed check 1 just before
   losing the lease still never overwrites what the new leader wrote.

A batch is not atomic: after the lease read it is one ``update`` command per
collection (runs, then records, then the journal; ordered, so it stops at the
first error) plus one ``delete`` for removed records, and a fenced-off batch
may have applied its first writes to documents no newer leader had touched.
The new leader owns every document it writes, and reconciles the rest at
take-over. The driver does not retry these raw commands; when one fails with a
network error the outcome is unknown, and writing the same batch again is safe
(every write is an idempotent upsert or delete).

Write concern: ``w="majority", j=True`` on every write. An acknowledged launch
or state transition must survive the loss of the primary of a replica set:
a write acknowledged by the primary alone can be rolled back when another
member is elected, and the new leader would then never learn about a run it
was told had started. Reads use read concern ``majority``, so a new leader
loads only state that cannot be rolled back. Both are accepted by FerretDB and
by a standalone MongoDB (where they are the same as ``w=1``/``local``). Bound
every operation with ``timeoutMS`` in the URI if a lost majority must not block
a write indefinitely.

Clocks: the lease's ``expires_at`` is computed from the controller's clock
(``datetime.now(UTC)``), not the server's (FerretDB has no ``$$NOW`` in
updates), so controllers' clocks must agree within a small fraction of the
lease TTL; otherwise a controller with a fast clock takes a lease that is still
valid. Times are stored as BSON dates, which hold milliseconds: microseconds are
truncated.

FerretDB 1.x (SQLite backend) compatibility: only single-document atomic
updates, ``findAndModify``, upserts, unique (sparse) indexes and plain finds
with sort/skip/limit are used. Write commands are sent as raw ``update``
commands rather than through ``bulk_write``: FerretDB's reply to a failed
update has no ``nModified`` and pymongo's bulk API fails on it, and FerretDB
always reports a write error at index 0, so the fence finds out which document
is newer by querying for it instead of trusting the index. FerretDB 1.x's SQLite
backend serves only a filter on ``_id`` alone from an index; the fenced upserts
and the other queries scan their collection there (a few milliseconds per
hundred documents), which suits tests, not a large deployment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteConcernError, WriteError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

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

DEFAULT_DATABASE = "shards"

_LEASE_ID = "leader"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WRITE_CONCERN = WriteConcern(w="majority", j=True)
_READ_CONCERN = ReadConcern("majority")
_DUPLICATE_KEY = 11000
# Well below the server's maxWriteBatchSize and 16 MiB command size for our documents.
_OPS_PER_COMMAND = 1000
_ACTIVE_STATES = sorted(state.value for state in ACTIVE_STATES)

_INDEXES: dict[str, list[IndexModel]] = {
    "records": [IndexModel([("revision", DESCENDING)], name="records_by_revision")],
    "runs": [
        IndexModel(
            [("scope_id", ASCENDING), ("process_id", ASCENDING), ("created_ts", DESCENDING)],
            name="runs_by_process",
        ),
        IndexModel([("scope_id", ASCENDING), ("created_ts", DESCENDING)], name="runs_by_scope"),
        IndexModel([("state", ASCENDING)], name="runs_by_state"),
        # sparse, not partial: FerretDB 1.x has no partialFilterExpression. Runs
        # without a key have no field, so they never collide.
        IndexModel([("idempotency_key", ASCENDING)], name="runs_by_key", unique=True, sparse=True),
    ],
}


class MongoStore:
    """MongoDB-backed ``Store`` (also runs on FerretDB).

    ``uri`` is a ``mongodb://`` or ``mongodb+srv://`` URI; ``database``
    overrides the database it names (``shards`` when it names none).
    """

    def __init__(self, uri: str, database: str | None = None) -> None:
        self._uri = uri
        self._database_name = database
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        # Exact per-document fencing, unless the server cannot serve it from an index.
        self._fence_each_document = True

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self._client is not None:
            return
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            self._uri, tz_aware=True, appname="shards-controller"
        )
        options: dict[str, Any] = {"write_concern": _WRITE_CONCERN, "read_concern": _READ_CONCERN}
        try:
            if self._database_name:
                db = client.get_database(self._database_name, **options)
            else:
                db = client.get_default_database(DEFAULT_DATABASE, **options)
            for name, indexes in _INDEXES.items():
                # One index per command: FerretDB 1.24 crashes the connection when one
                # createIndexes names two or more indexes that already exist.
                for index in indexes:
                    await db[name].create_indexes([index])
            build = await client.admin.command("buildInfo")
        except BaseException:
            await client.close()
            raise
        self._fence_each_document = "ferretdbVersion" not in build
        self._client = client
        self._db = db

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._db = self._client, None, None
            await client.close()

    # -- leadership

    async def acquire_lease(self, holder_id: str, address: str, ttl: timedelta) -> Lease | None:
        lease = self.db.lease
        now = datetime.now(UTC)
        expires = now + ttl
        renewed = await lease.find_one_and_update(
            {"_id": _LEASE_ID, "holder_id": holder_id, "expires_at": {"$gt": now}},
            {"$set": {"address": address, "expires_at": expires}},
            return_document=ReturnDocument.AFTER,
        )
        if renewed is not None:
            return _lease_from_doc(renewed)
        try:
            # Expired (whoever held it, us included) or never taken: a new term.
            # On a fresh store the upsert inserts term 1 ($inc of a missing field).
            taken = await lease.find_one_and_update(
                {"_id": _LEASE_ID, "expires_at": {"$lte": now}},
                {
                    "$set": {"holder_id": holder_id, "address": address, "expires_at": expires},
                    "$inc": {"term": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            # The filter did not match, so the upsert tried a second "leader":
            # another holder's lease is valid (or another controller won the
            # very first insert a moment ago).
            return None
        return _lease_from_doc(taken) if taken is not None else None

    async def renew_lease(self, holder_id: str, address: str, ttl: timedelta, term: int) -> Lease | None:
        renewed = await self.db.lease.find_one_and_update(
            {"_id": _LEASE_ID, "holder_id": holder_id, "term": term},
            {"$set": {"address": address, "expires_at": datetime.now(UTC) + ttl}},
            return_document=ReturnDocument.AFTER,
        )
        return _lease_from_doc(renewed) if renewed is not None else None

    async def read_lease(self) -> Lease | None:
        doc = await self.db.lease.find_one({"_id": _LEASE_ID})
        return _lease_from_doc(doc) if doc is not None else None

    async def release_lease(self, holder_id: str) -> None:
        await self.db.lease.update_one(
            {"_id": _LEASE_ID, "holder_id": holder_id}, {"$set": {"expires_at": _EPOCH}}
        )

    # -- records, runs, journal

    async def write(self, batch: WriteBatch, term: int) -> None:
        if not batch:
            return
        await self._check_term(term)
        db = self.db
        # Runs first: a record must never name a run the store does not have.
        if batch.runs:
            now = datetime.now(UTC)
            await self._upsert(db.runs, [_run_doc(run, term, now) for run in batch.runs], term)
        if batch.records:
            await self._upsert(db.records, [_record_doc(record, term) for record in batch.records], term)
        if batch.removed:
            await self._delete(
                db.records, [_record_id(scope, process) for scope, process in batch.removed], term
            )
        if batch.journal:
            await self._append_journal([_journal_doc(entry, term) for entry in batch.journal])

    async def load_records(self) -> list[ProcessRecord]:
        return [record_from_doc(doc) async for doc in self.db.records.find({})]

    async def load_active_runs(self) -> list[Run]:
        cursor = self.db.runs.find({"state": {"$in": _ACTIVE_STATES}})
        return [run_from_doc(doc) async for doc in cursor]

    async def get_run(self, run_id: str) -> Run | None:
        doc = await self.db.runs.find_one({"_id": run_id})
        return run_from_doc(doc) if doc is not None else None

    async def find_run_by_idempotency_key(self, key: str) -> Run | None:
        if not key:
            return None  # empty keys are not stored
        doc = await self.db.runs.find_one({"idempotency_key": key})
        return run_from_doc(doc) if doc is not None else None

    async def list_runs(self, scope_id: str, process_id: str, limit: int, after: str = "") -> list[Run]:
        if limit == 0:
            return []  # as SQLite's LIMIT 0; MongoDB's limit(0) would mean "no limit"
        query: Doc = {"scope_id": scope_id}
        if process_id:
            query["process_id"] = process_id
        if after:
            cursor_doc = await self.db.runs.find_one({"_id": after}, {"created_ts": 1})
            if cursor_doc is None:
                return []
            created = cursor_doc["created_ts"]
            query["$or"] = [{"created_ts": {"$lt": created}}, {"created_ts": created, "_id": {"$lt": after}}]
        cursor = self.db.runs.find(query).sort([("created_ts", DESCENDING), ("_id", DESCENDING)])
        if limit > 0:
            cursor = cursor.limit(limit)
        return [run_from_doc(doc) async for doc in cursor]

    async def journal_since(self, revision: int, limit: int) -> list[JournalEntry]:
        if limit == 0:
            return []
        cursor = self.db.journal.find({"_id": {"$gt": revision}}).sort("_id", ASCENDING)
        if limit > 0:
            cursor = cursor.limit(limit)
        return [journal_from_doc(doc) async for doc in cursor]

    async def max_revision(self) -> int:
        db = self.db
        journal = await db.journal.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
        record = await db.records.find_one({}, {"revision": 1}, sort=[("revision", DESCENDING)])
        return max(
            int(journal["_id"]) if journal is not None else 0,
            int(record.get("revision") or 0) if record is not None else 0,
        )

    async def prune_journal(self, keep_last: int) -> None:
        journal = self.db.journal
        cursor = journal.find({}, {"_id": 1}).sort("_id", DESCENDING).skip(max(keep_last, 0)).limit(1)
        newest_dropped = [doc["_id"] async for doc in cursor]
        if newest_dropped:
            await journal.delete_many({"_id": {"$lte": newest_dropped[0]}})

    # -- workers

    async def save_worker(self, worker: WorkerInfo, term: int) -> None:
        await self._check_term(term)
        doc = {"_id": worker.worker_id, "term": term, **worker_to_doc(worker)}
        await self._upsert(self.db.workers, [doc], term)

    async def load_workers(self) -> list[WorkerInfo]:
        return [worker_from_doc(doc) async for doc in self.db.workers.find({})]

    async def delete_worker(self, worker_id: str, term: int) -> None:
        await self._check_term(term)
        await self._delete(self.db.workers, [worker_id], term)

    # -- fencing

    async def _check_term(self, term: int) -> None:
        doc = await self.db.lease.find_one({"_id": _LEASE_ID}, {"term": 1})
        if doc is not None and doc["term"] > term:
            raise StaleTerm(f"term {term} is stale: term {doc['term']} leads")

    async def _upsert(self, collection: AsyncCollection[Doc], docs: list[Doc], term: int) -> None:
        """Replace-or-insert ``docs`` unless a newer term wrote them: one command per chunk.

        On MongoDB every document's write is conditional on its term (served by
        the ``_id`` index). FerretDB 1.x serves only a bare ``_id`` filter from
        an index and scans the collection for anything more, which made a batch
        quadratic (300 records: 11 s). There the batch is checked once (one
        query for a document a newer term wrote) and written by ``_id``: a
        writer paused between that check and its write (milliseconds, after it
        passed the lease check too) could still overwrite; on MongoDB it cannot.
        """
        per_document = self._fence_each_document
        for chunk in _chunks(docs, _OPS_PER_COMMAND):
            if not per_document:
                await self._raise_if_newer(collection, [doc["_id"] for doc in chunk], term)
            reply = await self.db.command(
                {
                    "update": collection.name,
                    "updates": [
                        {
                            "q": {"_id": doc["_id"], "term": {"$lte": term}}
                            if per_document
                            else {"_id": doc["_id"]},
                            "u": doc,
                            "upsert": True,
                        }
                        for doc in chunk
                    ],
                    "ordered": True,
                    "writeConcern": _WRITE_CONCERN.document,
                }
            )
            await self._raise_for_reply(collection, reply, [doc["_id"] for doc in chunk], term)

    async def _append_journal(self, docs: list[Doc]) -> None:
        """Insert journal entries: new documents, never rewritten, so no per-document fence.

        A retried batch finds its entries there already: those duplicates are fine.
        """
        try:
            await self.db.journal.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            others = [e for e in error.details.get("writeErrors", []) if e.get("code") != _DUPLICATE_KEY]
            if others:
                raise

    async def _delete(self, collection: AsyncCollection[Doc], ids: list[Any], term: int) -> None:
        result = await collection.delete_many({"_id": {"$in": ids}, "term": {"$lte": term}})
        if result.deleted_count < len(set(ids)):
            # Some were absent (fine) or written by a newer term (fenced off).
            await self._raise_if_newer(collection, ids, term)

    async def _raise_for_reply(
        self, collection: AsyncCollection[Doc], reply: Doc, ids: list[Any], term: int
    ) -> None:
        errors: list[Doc] = reply.get("writeErrors") or []
        if errors:
            first = errors[0]
            code = first.get("code")
            if code == _DUPLICATE_KEY:
                # Either the fence (a newer term owns one of these documents) or a
                # real conflict on another unique index (an idempotency key).
                await self._raise_if_newer(collection, ids, term)
                raise DuplicateKeyError(first.get("errmsg", "duplicate key"), code, first)
            raise WriteError(first.get("errmsg", "write error"), code, first)
        concern_error: Doc | None = reply.get("writeConcernError")
        if concern_error:
            raise WriteConcernError(
                concern_error.get("errmsg", "write concern error"), concern_error.get("code"), concern_error
            )

    async def _raise_if_newer(self, collection: AsyncCollection[Doc], ids: list[Any], term: int) -> None:
        newer = await collection.find_one({"_id": {"$in": ids}, "term": {"$gt": term}}, {"term": 1})
        if newer is not None:
            owner = f"{collection.name} {newer['_id']!r}"
            raise StaleTerm(f"term {term} is stale: {owner} was written by term {newer['term']}")


def _chunks(items: Sequence[Doc], size: int) -> Iterator[Sequence[Doc]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record_id(scope_id: str, process_id: str) -> str:
    return json.dumps([scope_id, process_id], separators=(",", ":"))


def _record_doc(record: ProcessRecord, term: int) -> Doc:
    return {"_id": _record_id(record.scope_id, record.process_id), "term": term, **record_to_doc(record)}


def _run_doc(run: Run, term: int, now: datetime) -> Doc:
    doc = {"_id": run.run_id, "term": term, **run_to_doc(run)}
    if not run.idempotency_key:
        del doc["idempotency_key"]  # so that the unique sparse index skips it
    doc["created_ts"] = run.created_at or now
    return doc


def _journal_doc(entry: JournalEntry, term: int) -> Doc:
    return {"_id": entry.revision, "term": term, **journal_to_doc(entry)}


def _lease_from_doc(doc: Doc) -> Lease:
    return Lease(
        holder_id=doc["holder_id"],
        address=doc["address"],
        term=int(doc["term"]),
        expires_at=doc["expires_at"],
    )
