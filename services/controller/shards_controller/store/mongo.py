"""The MongoDB store: the system of record that lets controllers fail over.

Collections (in the database named by the URI, or ``database``, default
``shards``), every document keyed by what the hot path looks it up by:

- ``log``: the commit log, one entry per group commit (``store.mongo_log``);
- ``records``: ``~head``, the journal's head and the log's ``applied``;
  ``~snapshot``, the records' snapshot; and, as earlier versions wrote them,
  one document per process record, ``_id`` the JSON array ``["<scope_id>",
  "<process_id>"]``, read until the first snapshot takes them in.
- ``record_pages``, ``record_chunks``: the process records, written behind as
  pages and folded into chunks (``store.mongo_pages``). Nothing reads a record
  by its ``_id``: the controller holds them all, a take-over loads them all.
- ``runs``: ``_id`` is the run id. ``created_ts`` orders ``list_runs``;
  ``active: true`` is there while the run is active (sparse-indexed on MongoDB).
- ``keys``: one per idempotency key, ``_id`` the (namespaced) key, naming its run.
- ``journal``: pages of entries, ``_id`` the highest revision in each
  (``store.mongo_journal``).
- ``workers``: ``_id`` is the worker id. ``lease``: the single ``_id: "leader"``.
- ``run_logs``, ``run_log_chunks``: whole run logs, by ``_id`` (``store.mongo_logs``).

The hot path and why each step is served by an index (on MongoDB; on
FerretDB's PostgreSQL backend the ``_id`` index is the GIN index that
``scripts/ferretdb-postgresql.sql`` adds, since FerretDB 1.24 pushes ``_id``
filters down as ``@>``; its SQLite backend pushes down ``{_id: <string>}``):

- a group commit: one ordered ``insert`` into ``log`` of the next slot (a
  uniqueness check on ``_id``), its journal entries in the same entry; nothing
  is updated (``runs`` and ``keys`` are written behind by ``_id``, records
  and journal entries as pages, inserts all: ``store.mongo_behind``);
- a key lookup (none for a key its client vouches new: ``new_key``,
  ``remote_lookups``): the keys behind, then ``keys.find_one({_id})``, then
  its run: the runs behind, then ``runs.find_one({_id})``;
- the fence, only when needed (below): ``lease.update_one({_id, term})``.

Take-over's loads, ``list_runs``, the watch resume (``journal_since``: only
what the controller keeps, ``journal_keep`` revisions), the log's replay and
its pruning may scan on FerretDB; on MongoDB each has an index.

Idempotency keys. A launch with a key writes ``{_id: key, run_id}`` in the
same log entry as its run, so the two are stored together or not at all. A
key known to the controller (its active runs) is answered from memory; any
other is looked up as above. Two controllers racing with one key in
different terms: the older term's write meets the newer term's log slot, or
its key document: StaleTerm, and the launch is retried on the leader.

Fencing. Every write carries the writer's lease term, and is refused
(``StaleTerm``) once a newer term has taken the lease:

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
3. The log's slots: a deposed leader's next slot is taken (``store.mongo_log``).
   Every document written behind carries the term of its writer and every
   such write is conditional on it (``{_id, term: {$lte: term}}``, where the
   server serves that filter: not FerretDB's SQLite backend).

A torn batch. A log entry is one document: stored whole or not at all (a
batch of more than ``ITEMS_PER_ENTRY`` documents takes several, inserted in
order, so a cut leaves a prefix). Its journal entries are a second command:
entries without their change only serve watch resumes. Older versions wrote
each collection by its own command: what a cut left there (a run without its
record, a key without its run) the next leader's take-over repairs
(``Controller._restore_runs``).

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
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_concern import ReadConcern

from shards.models import ProcessRecord, Run, WorkerInfo
from shards_controller.store.base import JournalEntry, StaleTerm, WriteBatch
from shards_controller.store.documents import (
    Doc,
    journal_from_doc,
    record_from_doc,
    run_from_doc,
    worker_from_doc,
    worker_to_doc,
)
from shards_controller.store.mongo_behind import FLUSH_EVERY_S, WrittenBehind
from shards_controller.store.mongo_commands import (
    WRITE_CONCERN,
    Writer,
    key_doc,
    likely_new_record,
    record_and_journal_docs,
    record_id,
    run_doc,
)
from shards_controller.store.mongo_journal import MongoJournal
from shards_controller.store.mongo_lease import MongoLease
from shards_controller.store.mongo_log import Changes, CommitLog, entries
from shards_controller.store.mongo_logs import MongoRunLogs
from shards_controller.store.mongo_pages import RecordPages
from shards_controller.store.mongo_schema import (
    create_indexes,
    is_ferretdb,
    lease_database,
    pushes_down_id_and_term,
    write_limits,
)

DEFAULT_DATABASE = "shards"
T = TypeVar("T")

# Below FerretDB's 20 PostgreSQL connections: the lease's commands find one free (bench/lease_probe.py).
DATA_POOL_SIZE = 16
_READ_CONCERN = ReadConcern("majority")


class MongoStore(MongoLease, MongoJournal, MongoRunLogs):
    """MongoDB-backed ``Store`` (also runs on FerretDB).

    ``uri`` is a ``mongodb://`` or ``mongodb+srv://`` URI; ``database``
    overrides the database it names (``shards`` when it names none);
    ``write_behind_s``: how often the log's changes are written behind.
    """

    remote_lookups = True

    def __init__(self, uri: str, database: str | None = None, write_behind_s: float = FLUSH_EVERY_S) -> None:
        self._uri = uri
        self._database_name = database
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        # The lease's own client (pool): on the data pool a renewal queued behind every
        # launch's key lookup (2,000 in flight outlasted the TTL): the lone leader stepped down.
        self._lease_client: AsyncMongoClient[Doc] | None = None
        self._lease_db: AsyncDatabase[Doc] | None = None
        self._writer: Writer | None = None
        self._write_behind_s = write_behind_s
        self._log: CommitLog | None = None
        self._behind: WrittenBehind | None = None
        self._pages: RecordPages | None = None
        # The active runs this store has logged (their keys with them): any other run it logs is
        # new to it (a launch, or a run of an earlier leader's), so is its key.
        self._active_logged: set[str] = set()
        # The term this store loaded the log's tail for (a take-over): from then on, what it
        # notes is all the log holds above ``applied``, and reads need not replay the log.
        self._loaded_term: int | None = None
        # The take-over's replay of the log, shared by its loads (``_replayed``).
        self._replay: tuple[tuple[int, int], asyncio.Future[tuple[Changes, int]]] | None = None

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

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
        lease_name = lease_database(db.name, ferretdb, term_in_filter)
        self._client, self._lease_client = client, lease_client
        self._db, self._lease_db = db, self._database(lease_client, lease_name)
        self._fence_db = self._database(client, lease_name)
        self._writer = Writer(db, term_in_filter, limits)
        self._log = CommitLog(db)
        self._pages = RecordPages(db, self._fenced)
        self._behind = WrittenBehind(
            db, self._writer, self._fenced, self._log, self._pages, self._write_behind_s
        )

    def _database(self, client: AsyncMongoClient[Doc], name: str | None = None) -> AsyncDatabase[Doc]:
        options: dict[str, Any] = {"write_concern": WRITE_CONCERN, "read_concern": _READ_CONCERN}
        if name or self._database_name:
            return client.get_database(name or self._database_name, **options)
        return client.get_default_database(DEFAULT_DATABASE, **options)

    async def close(self) -> None:
        if self._behind is not None:
            await self._behind.close()
        clients = [c for c in (self._client, self._lease_client) if c is not None]
        self._client = self._lease_client = self._db = self._lease_db = self._fence_db = self._writer = None
        self._log = self._behind = self._pages = None
        await asyncio.gather(*(client.close() for client in clients))

    @property
    def _write(self) -> Writer:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    @property
    def behind(self) -> WrittenBehind:
        """What the log holds that is not written behind yet (``flush()`` writes it now)."""
        if self._behind is None:
            raise RuntimeError("store is not open")
        return self._behind

    @property
    def pages(self) -> RecordPages:
        """The records' pages and snapshot (``compact()`` folds the pages now)."""
        if self._pages is None:
            raise RuntimeError("store is not open")
        return self._pages

    @property
    def _commit_log(self) -> CommitLog:
        if self._log is None:
            raise RuntimeError("store is not open")
        return self._log

    # -- records, runs, journal

    async def write(self, batch: WriteBatch, term: int) -> None:
        if not batch:
            return
        commit_log, behind = self._commit_log, self.behind
        now = datetime.now(UTC)
        self._replay = None  # the log moves on
        async with commit_log.lock:
            # New to this store: a launch's run (or an active run it did not write yet, after a
            # take-over: a repair). The key's document goes with it, in the same entry.
            new_runs = [run for run in batch.runs if run.run_id not in self._active_logged]
            born = {run.run_id for run in new_runs}
            born |= {record_id(r.scope_id, r.process_id) for r in batch.records if likely_new_record(r)}
            record_docs, journal_docs = record_and_journal_docs(batch.records, batch.journal, term)
            logged = entries(
                record_docs,
                [record_id(s, p) for s, p in batch.removed],
                [run_doc(run, term, now) for run in batch.runs],
                [key_doc(run, term) for run in new_runs if run.idempotency_key],
                journal_docs,
                born,
            )
            await behind.room()
            try:
                if logged:
                    slots = await commit_log.claim(len(logged), term, behind.applied)
                    for slot, entry in zip(slots, logged, strict=True):
                        entry.update(_id=slot, term=term, writer=commit_log.writer_id)
                highest, raise_head = self.head_write(batch)
                writes: list[Coroutine[Any, Any, None]] = []
                if logged:
                    writes.append(commit_log.insert(logged, term))
                if raise_head is not None:
                    writes.append(raise_head)
                await self._fenced(term, writes)
            except StaleTerm:
                self._loaded_term = None  # deposed: what it noted is not all there is
                raise
            behind.note(logged)
            for run in batch.runs:
                if run.state.is_active:
                    self._active_logged.add(run.run_id)
                else:
                    self._active_logged.discard(run.run_id)
        self.written(highest, raised=raise_head is not None)

    async def _load(self, read: Callable[[], Awaitable[dict[str, T]]]) -> tuple[dict[str, T], Changes]:
        """``read`` of the collections (by ``_id``), and the log's changes above what they hold.

        The log is read after the collections: what a write-behind wrote meanwhile is in the log
        too, unless it was pruned, which only happens after ``applied`` moved: then again."""
        behind = self.behind
        for _ in range(20):
            applied = await behind.applied()
            loaded = await read()
            held = self._held
            if held is None:
                changes, _ = await self._commit_log.replay(applied)
            else:
                changes = await self._replayed(held.term, applied)
            if await behind.applied() == applied:
                if held is not None and self._loaded_term != held.term:
                    # A take-over: written behind again, under its term, as its own (once: the
                    # take-over's loads run at once and share the replay).
                    behind.take(changes.restamped(held.term))
                    self._active_logged.clear()
                    self._loaded_term = held.term
                return loaded, changes
        raise RuntimeError("the log was written behind and pruned all along the load: load again")

    async def _replayed(self, term: int, applied: int) -> Changes:
        """The log above ``applied``, replayed once for the loads of ``term``'s take-over (its
        records and its active runs, read at once: replayed by each, the log's decoding was most
        of a take-over's reads, 1.2 s with 1,000 entries behind; ``bench.replay``). Until this
        store writes: then the log has moved on."""
        key = (term, applied)
        if self._replay is None or self._replay[0] != key:
            self._replay = (key, asyncio.ensure_future(self._commit_log.replay(applied)))
        replay = self._replay[1]
        try:
            changes, _ = await asyncio.shield(replay)
        except Exception:
            if self._replay is not None and self._replay[1] is replay:
                self._replay = None  # the next load reads the log again
            raise
        return changes

    async def load_records(self) -> list[ProcessRecord]:
        # Each document is converted as it comes: 100,000 records held as documents first took
        # the controller from 142 to 398 MB (``bench.mongo_side --only memory``).
        async def read() -> dict[str, ProcessRecord]:
            return await self.pages.load(record_from_doc)

        records, changes = await self._load(read)
        for removed in changes.removed:
            records.pop(removed, None)
        records.update((record_id, record_from_doc(doc)) for record_id, doc in changes.records.items())
        return list(records.values())

    async def load_active_runs(self) -> list[Run]:
        async def read() -> dict[str, Run]:
            # An equality: pushed down to SQL by FerretDB's PostgreSQL backend.
            return {doc["_id"]: run_from_doc(doc) async for doc in self.db.runs.find({"active": True})}

        runs, changes = await self._load(read)
        runs.update((run_id, run_from_doc(doc)) for run_id, doc in changes.runs.items())
        return [run for run in runs.values() if run.state.is_active]

    async def _unwritten(self) -> WrittenBehind | Changes:
        """What the log holds that the collections may not: as noted by the leader, or replayed
        (a store that did not take over: a standby, a deposed leader, a tool)."""
        held, behind = self._held, self.behind
        if held is not None and held.term == self._loaded_term:
            return behind
        changes, _ = await self._commit_log.replay(await behind.applied())
        return changes

    async def get_run(self, run_id: str) -> Run | None:
        return await self._run(await self._unwritten(), run_id)

    async def _run(self, unwritten: WrittenBehind | Changes, run_id: str) -> Run | None:
        doc = unwritten.run(run_id) or await self.db.runs.find_one({"_id": run_id})
        return run_from_doc(doc) if doc is not None else None

    async def find_run_by_idempotency_key(self, key: str) -> Run | None:
        if not key:
            return None  # empty keys are not stored
        unwritten = await self._unwritten()
        doc = unwritten.key(key) or await self.db.keys.find_one({"_id": key})
        if doc is None:
            return None
        # None when its run is missing (a torn batch): the key belongs to nobody yet.
        return await self._run(unwritten, doc["run_id"])

    async def list_runs(self, scope_id: str, process_id: str, limit: int, after: str = "") -> list[Run]:
        if limit == 0:
            return []  # as SQLite's LIMIT 0; MongoDB's limit(0) would mean "no limit"
        behind = {
            run_id: doc
            for run_id, doc in (await self._unwritten()).all_runs().items()
            if doc["scope_id"] == scope_id and (not process_id or doc["process_id"] == process_id)
        }
        query: Doc = {"scope_id": scope_id}
        if process_id:
            query["process_id"] = process_id
        if after:
            cursor_doc = behind.get(after) or await self.db.runs.find_one({"_id": after}, {"created_ts": 1})
            if cursor_doc is None:
                return []
            created = cursor_doc["created_ts"]
            query["$or"] = [{"created_ts": {"$lt": created}}, {"created_ts": created, "_id": {"$lt": after}}]
            behind = {k: d for k, d in behind.items() if (d["created_ts"], k) < (created, after)}
        cursor = self.db.runs.find(query).sort([("created_ts", DESCENDING), ("_id", DESCENDING)])
        if limit > 0:
            cursor = cursor.limit(limit)
        found = {doc["_id"]: doc async for doc in cursor}
        found.update(behind)  # the newer version of each
        newest = sorted(found.values(), key=lambda doc: (doc["created_ts"], doc["_id"]), reverse=True)
        return [run_from_doc(doc) for doc in (newest[:limit] if limit > 0 else newest)]

    async def journal_since(self, revision: int, limit: int) -> list[JournalEntry]:
        if limit == 0:
            return []
        # What is behind first: an entry written behind meanwhile is in the collection by then.
        behind = [doc for rev, doc in (await self._unwritten()).all_journal().items() if rev > revision]
        found = {entry.revision: entry for entry in await MongoJournal.journal_since(self, revision, limit)}
        found.update((doc["_id"], journal_from_doc(doc)) for doc in behind)
        ordered = [found[rev] for rev in sorted(found)]
        return ordered[:limit] if limit > 0 else ordered

    async def prune_journal(self, keep_last: int) -> None:
        await self.behind.flush()  # the entries it drops are in the collection, none behind
        await MongoJournal.prune_journal(self, keep_last)

    async def ended_runs_before(self, created_before: datetime, limit: int, after: str = "") -> list[Run]:
        await self.behind.flush()  # retention's query, now and then: from the collection alone
        return await MongoRunLogs.ended_runs_before(self, created_before, limit, after)

    async def delete_runs(self, runs: list[Run], term: int) -> None:
        # Nothing of theirs may be written behind after they are gone.
        await self.behind.flush()
        await MongoRunLogs.delete_runs(self, runs, term)

    # -- workers

    async def save_worker(self, worker: WorkerInfo, term: int) -> None:
        doc = {"_id": worker.worker_id, "term": term, **worker_to_doc(worker)}
        await self._fenced(term, [self._write.upsert(self.db.workers, [doc], term)])

    async def load_workers(self) -> list[WorkerInfo]:
        return [worker_from_doc(doc) async for doc in self.db.workers.find({})]

    async def delete_worker(self, worker_id: str, term: int) -> None:
        await self._fenced(term, [self._write.delete(self.db.workers, [worker_id], term)])
