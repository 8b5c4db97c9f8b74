"""The MongoDB store: the system of record that lets controllers fail over.

Collections (in the database named by the URI, or ``database``, default
``shards``), every document keyed by what the hot path looks it up by:

- ``records``: one per process record, ``_id`` the JSON array
  ``["<scope_id>", "<process_id>"]`` (a plain string: an exact index hit on
  every server).
- ``runs``: ``_id`` is the run id. ``created_ts`` orders ``list_runs``;
  ``active: true`` is there while the run is active (sparse-indexed on MongoDB).
- ``keys``: one per idempotency key, ``_id`` the (namespaced) key, naming its run.
- ``journal``: ``_id`` is the revision.
- ``workers``: ``_id`` is the worker id. ``lease``: the single ``_id: "leader"``.
- ``run_logs``, ``run_log_chunks``: whole run logs, by ``_id`` (``store.mongo_logs``).

The hot path (launch, dispatch, end of a run) and why each step is served by an index:

======================================  ===================================================
operation                               on MongoDB / FerretDB (PostgreSQL) / FerretDB (SQLite)
======================================  ===================================================
key lookup: ``keys.find_one({_id})``    ``_id`` index / GIN index on ``_id`` (1) / ``_id``
(none for a key its client vouches      alone is pushed down to SQLite's primary key
new: ``new_key``, ``remote_lookups``)
its run (only when the key is known):   the same
``runs.find_one({_id})``
one group commit: concurrently, one     ``_id`` index, the term checked on the document it
``update`` command per collection       finds / GIN (1), FerretDB checks the term on the one
(runs, keys, records; on FerretDB 4     row it fetched / SQLite: the filter is ``{_id}``
statements a command, 4 at once) of     alone (2)
upserts by ``{_id, term: {$lte}}``, one
``delete`` by ``_id`` per removed
record, one ``insert`` of journal
entries, and one unordered ``insert``   inserts check uniqueness on the ``_id`` index only
per collection of what is most likely
new (a launch's run and key, a
define's records; upserted instead
when one exists already)
fence (only when needed, see below):    a collection of one document
``lease.update_one({_id, term})``
======================================  ===================================================

(1) FerretDB 1.24 creates the ``_id`` index as a btree but pushes ``_id`` filters
down as ``@>``, which a btree cannot serve: without the GIN index that
``scripts/ferretdb-postgresql.sql`` adds, every find, update and delete scans
its table. (2) FerretDB 1.24's SQLite backend pushes down a filter that is
exactly ``{_id: <string>}`` and nothing else; ``open()`` asks the server (an
``explain``) whether it pushes ``{_id, term}`` down, and leaves the term out of
the filters when it does not.

Nothing on the hot path scans: the ``keys`` lookup replaced a query on the
runs' ``idempotency_key``, the lease read before every write went (see
fencing), and the journal is only inserted into; its head (``store.mongo_journal``)
gives a take-over the newest revision by ``_id``. Take-over's ``load_records`` and
``load_active_runs``, ``list_runs``, the watch resume (``journal_since``: only
what the controller keeps, ``journal_keep`` revisions) and pruning may scan on
FerretDB; on MongoDB each has an index.

Idempotency keys. A launch with a key writes ``{_id: key, run_id}`` in the same
group commit as its run (a key document is written with every write of an
active keyed run, so a take-over's repair of the run writes it again). A key
known to the controller (its active runs) is answered from memory; any other is
one ``_id`` lookup. Two controllers racing with one key in different terms:
the older term's upsert meets the newer term's key document, misses its
filter, inserts a second ``_id`` and gets a duplicate key error, which is
StaleTerm: that launch is refused and retried on the leader, which finds the key.

Fencing. Every write carries the writer's lease term, and is refused
(``StaleTerm``) once a newer term has taken the lease, three ways:

1. This store remembers the lease it took or renewed and until when it is
   valid on its own monotonic clock (the TTL less a quarter, a margin for the
   controllers' clocks, which must agree within it). A write that starts with
   that lease lapsed reads the lease first and is refused, unwritten, when a
   newer term holds it (a controller paused past its lease: SIGSTOP).
2. After the writes: when their acknowledgement came back while the lease was
   still valid, they were applied before any other controller could take the
   lease (which needs the lease to have expired on its own clock), hence
   before its take-over loads the state: nothing more to check, no extra round
   trip. Otherwise (a slow server, a pause between send and reply) one
   conditional update of the lease document, ``{_id: "leader", term: {$lte:
   term}}`` with a real modification (``$inc``), acknowledged by a majority:
   if it matches, no newer term had the lease when the writes were done; if it
   does not, the batch gets StaleTerm. A write, not a read: on a replica set a
   deposed primary could still answer a read with the old term, but cannot
   have a majority acknowledge a write.
3. Every document carries the term of its last writer and every write is
   conditional on it (``{_id, term: {$lte: term}}``), so a write that was in
   flight while a newer leader took over never overwrites a document that
   leader wrote (on FerretDB's SQLite backend, where that filter would scan,
   only 1 and 2 hold).

A torn batch. The collections are written concurrently (one round trip of
latency: a MongoDB write command names one collection, so one command per
collection is the fewest the server allows), and each command is ordered
within itself, so a batch cut short (a crash, a network error, a fenced-off
write) can leave any of its collections written and the others not: a run
without its record (a launch never acknowledged), a record naming a run that
is not stored, a key without its run, journal entries without their change.
The next leader's take-over repairs each (``Controller._restore_runs``): a run
no record took is scheduled again (its key is tracked again and rewritten with
it, so a retried launch finds it), a run missing under an active record is
rebuilt from the record, a key whose run is missing is not found (a retry makes
a new run and takes the key over), and the journal only serves watch resumes.
The driver does not retry these raw commands; rewriting a batch is safe (upserts
and deletes by ``_id``, journal duplicates ignored).

Write concern ``w="majority", j=True`` on every write, read concern
``majority``: an acknowledged change survives the loss of a replica set's
primary, and a new leader loads only state that cannot be rolled back. Both are
accepted by FerretDB and by a standalone MongoDB. Bound every operation with
``timeoutMS`` in the URI if a lost majority must not block a write indefinitely.

Clocks: the lease's ``expires_at`` comes from the controller's clock
(``datetime.now(UTC)``; FerretDB has no ``$$NOW`` in updates). Dates are BSON
dates (milliseconds). Only what FerretDB 1.24 and MongoDB both have is used:
single-document atomic updates, ``findAndModify``, upserts, unique and sparse
indexes, plain finds; no transactions, no change streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern

from shards.models import ProcessRecord, Run, WorkerInfo
from shards_controller.store.base import Lease, StaleTerm, WriteBatch
from shards_controller.store.documents import (
    Doc,
    record_from_doc,
    run_from_doc,
    worker_from_doc,
    worker_to_doc,
)
from shards_controller.store.mongo_commands import (
    WRITE_CONCERN,
    Writer,
    all_answered,
    journal_doc,
    key_doc,
    likely_new_record,
    likely_new_run,
    partition,
    record_doc,
    record_id,
    run_doc,
)
from shards_controller.store.mongo_journal import HEAD_ID, MongoJournal
from shards_controller.store.mongo_logs import MongoRunLogs
from shards_controller.store.mongo_schema import (
    create_indexes,
    is_ferretdb,
    pushes_down_id_and_term,
    write_limits,
)

DEFAULT_DATABASE = "shards"

_LEASE_ID = "leader"
# Below FerretDB's 20 PostgreSQL connections: the lease's commands find one free (bench/lease_probe.py).
DATA_POOL_SIZE = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READ_CONCERN = ReadConcern("majority")
# How much of the lease's TTL is not trusted: the controllers' clocks may differ by that much.
_CLOCK_MARGIN = 0.25


@dataclass(frozen=True, slots=True)
class _Held:
    """The lease this store took or renewed, and until when (monotonic) it trusts it."""

    term: int
    valid_until: float


class MongoStore(MongoJournal, MongoRunLogs):
    """MongoDB-backed ``Store`` (also runs on FerretDB).

    ``uri`` is a ``mongodb://`` or ``mongodb+srv://`` URI; ``database``
    overrides the database it names (``shards`` when it names none).
    """

    remote_lookups = True

    def __init__(self, uri: str, database: str | None = None) -> None:
        self._uri = uri
        self._database_name = database
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        # The lease's own client (pool): on the data pool a renewal queued behind every
        # launch's key lookup (2,000 in flight outlasted the TTL): the lone leader stepped down.
        self._lease_client: AsyncMongoClient[Doc] | None = None
        self._lease_db: AsyncDatabase[Doc] | None = None
        self._writer: Writer | None = None
        self._held: _Held | None = None

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def _lease(self) -> AsyncCollection[Doc]:
        if self._lease_db is None:
            raise RuntimeError("store is not open")
        return self._lease_db.lease

    @property
    def term_in_filters(self) -> bool:
        """Whether writes carry the per-document term fence (3 in the module's docstring)."""
        return self._writer is not None and self._writer.term_in_filter

    async def open(self) -> None:
        if self._client is not None:
            return
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            self._uri, tz_aware=True, appname="shards-controller", maxPoolSize=DATA_POOL_SIZE
        )
        lease_client: AsyncMongoClient[Doc] = AsyncMongoClient(self._uri, tz_aware=True, maxPoolSize=2)
        try:
            db = self._database(client)
            ferretdb = await is_ferretdb(db)
            await create_indexes(db, ferretdb)
            term_in_filter = await pushes_down_id_and_term(db)
            limits = write_limits(ferretdb)
        except BaseException:
            await asyncio.gather(client.close(), lease_client.close())
            raise
        self._client, self._lease_client = client, lease_client
        self._db, self._lease_db = db, self._database(lease_client)
        self._writer = Writer(db, term_in_filter, limits)

    def _database(self, client: AsyncMongoClient[Doc]) -> AsyncDatabase[Doc]:
        options: dict[str, Any] = {"write_concern": WRITE_CONCERN, "read_concern": _READ_CONCERN}
        if self._database_name:
            return client.get_database(self._database_name, **options)
        return client.get_default_database(DEFAULT_DATABASE, **options)

    async def close(self) -> None:
        clients = [c for c in (self._client, self._lease_client) if c is not None]
        self._client = self._lease_client = self._db = self._lease_db = self._writer = None
        await asyncio.gather(*(client.close() for client in clients))

    @property
    def _write(self) -> Writer:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    # -- leadership

    async def acquire_lease(self, holder_id: str, address: str, ttl: timedelta) -> Lease | None:
        lease = self._lease
        asked_at = time.monotonic()
        now = datetime.now(UTC)
        expires = now + ttl
        renewed = await lease.find_one_and_update(
            {"_id": _LEASE_ID, "holder_id": holder_id, "expires_at": {"$gt": now}},
            {"$set": {"address": address, "expires_at": expires}},
            return_document=ReturnDocument.AFTER,
        )
        if renewed is not None:
            return self._hold(_lease_from_doc(renewed), asked_at, ttl)
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
            self._held = None
            return None
        if taken is None:
            self._held = None
            return None
        return self._hold(_lease_from_doc(taken), asked_at, ttl)

    def _hold(self, lease: Lease, asked_at: float, ttl: timedelta) -> Lease:
        # From before the request was sent: the server may have expired it from then on.
        self._held = _Held(lease.term, asked_at + ttl.total_seconds() * (1 - _CLOCK_MARGIN))
        return lease

    async def renew_lease(self, holder_id: str, address: str, ttl: timedelta, term: int) -> Lease | None:
        asked_at = time.monotonic()
        renewed = await self._lease.find_one_and_update(
            {"_id": _LEASE_ID, "holder_id": holder_id, "term": term},
            {"$set": {"address": address, "expires_at": datetime.now(UTC) + ttl}},
            return_document=ReturnDocument.AFTER,
        )
        if renewed is None:
            self._held = None
            return None
        # Still our term: nobody took the lease in between, so it is ours from ``asked_at`` on.
        return self._hold(_lease_from_doc(renewed), asked_at, ttl)

    async def read_lease(self) -> Lease | None:
        doc = await self._lease.find_one({"_id": _LEASE_ID})
        return _lease_from_doc(doc) if doc is not None else None

    async def release_lease(self, holder_id: str) -> None:
        self._held = None
        await self._lease.update_one(
            {"_id": _LEASE_ID, "holder_id": holder_id}, {"$set": {"expires_at": _EPOCH}}
        )

    # -- fencing

    def _trusted(self, term: int) -> bool:
        """Whether this store holds ``term``'s lease and may still trust it (raises when it knows better)."""
        held = self._held
        if held is None:
            return False
        if held.term > term:
            raise StaleTerm(f"term {term} is stale: term {held.term} leads")
        return held.term == term and time.monotonic() < held.valid_until

    async def _fenced(self, term: int, writes: list[Coroutine[Any, Any, None]]) -> None:
        """Run the write coroutines ``writes`` concurrently, fenced by ``term`` (the module's docstring)."""
        try:
            if not self._trusted(term):
                await self._refuse_if_stale(term)
        except BaseException:
            for write in writes:
                write.close()  # refused before anything was sent
            raise
        await all_answered(writes)
        if not self._trusted(term):
            await self._fence(term)

    async def _refuse_if_stale(self, term: int) -> None:
        doc = await self.db.lease.find_one({"_id": _LEASE_ID}, {"term": 1})
        if doc is not None and int(doc.get("term", 0)) > term:
            raise StaleTerm(f"term {term} is stale: term {doc['term']} leads")

    async def _fence(self, term: int) -> None:
        result = await self.db.lease.update_one(
            {"_id": _LEASE_ID, "term": {"$lte": term}}, {"$inc": {"fenced_writes": 1}}
        )
        if result.matched_count == 0:
            await self._refuse_if_stale(term)  # no lease at all: nothing to be fenced by

    # -- records, runs, journal

    async def write(self, batch: WriteBatch, term: int) -> None:
        if not batch:
            return
        db, writer = self.db, self._write
        now = datetime.now(UTC)
        writes: list[Coroutine[Any, Any, None]] = []
        # What is most likely new (a launch's run and key, a define's records) is inserted:
        # on FerretDB an insert costs a tenth of an upsert (``Writer.insert_else_upsert``).
        new_runs, old_runs = partition(batch.runs, likely_new_run)
        for runs, put in ((new_runs, writer.insert_else_upsert), (old_runs, writer.upsert)):
            if runs:
                writes.append(put(db.runs, [run_doc(run, term, now) for run in runs], term))
                keyed = [key_doc(run, term) for run in runs if run.idempotency_key and run.state.is_active]
                if keyed:
                    writes.append(put(db.keys, keyed, term))
        new, old = partition(batch.records, likely_new_record)
        new_records, old_records = [record_doc(r, term) for r in new], [record_doc(r, term) for r in old]
        highest, raise_head = self.head_write(batch)
        if raise_head is not None:
            writes.append(raise_head)
        if new_records:
            writes.append(writer.insert_else_upsert(db.records, new_records, term))
        if old_records:
            writes.append(writer.upsert(db.records, old_records, term))
        if batch.removed:
            writes.append(writer.delete(db.records, [record_id(s, p) for s, p in batch.removed], term))
        if batch.journal:
            writes.append(writer.insert_new(db.journal, [journal_doc(e, term) for e in batch.journal]))
        await self._fenced(term, writes)
        self.written(highest, raised=raise_head is not None)

    async def load_records(self) -> list[ProcessRecord]:
        return [record_from_doc(doc) async for doc in self.db.records.find({}) if doc["_id"] != HEAD_ID]

    async def load_active_runs(self) -> list[Run]:
        # An equality: pushed down to SQL by FerretDB's PostgreSQL backend.
        return [run_from_doc(doc) async for doc in self.db.runs.find({"active": True})]

    async def get_run(self, run_id: str) -> Run | None:
        doc = await self.db.runs.find_one({"_id": run_id})
        return run_from_doc(doc) if doc is not None else None

    async def find_run_by_idempotency_key(self, key: str) -> Run | None:
        if not key:
            return None  # empty keys are not stored
        doc = await self.db.keys.find_one({"_id": key})
        if doc is None:
            return None
        # None when its run is missing (a torn batch): the key belongs to nobody yet.
        return await self.get_run(doc["run_id"])

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

    # -- workers

    async def save_worker(self, worker: WorkerInfo, term: int) -> None:
        doc = {"_id": worker.worker_id, "term": term, **worker_to_doc(worker)}
        await self._fenced(term, [self._write.upsert(self.db.workers, [doc], term)])

    async def load_workers(self) -> list[WorkerInfo]:
        return [worker_from_doc(doc) async for doc in self.db.workers.find({})]

    async def delete_worker(self, worker_id: str, term: int) -> None:
        await self._fenced(term, [self._write.delete(self.db.workers, [worker_id], term)])


def _lease_from_doc(doc: Doc) -> Lease:
    return Lease(
        holder_id=doc["holder_id"],
        address=doc["address"],
        term=int(doc["term"]),
        expires_at=doc["expires_at"],
    )
