"""The MongoDB store's commit log: a group commit is one insert.

On FerretDB 1.24 an update costs the machine about 2.2 ms of CPU and an insert
about 0.12 ms (``bench/ferretdb_costs.py``): a launch's life updated three
documents (its record at launch, its run and its record at its end), which
capped an update-based store at about 230 launches/s on two cores, and put
an update's round trip on every launch's path. So a group commit now inserts
its changes as they are, in one document of the ``log`` collection, and the
collections a take-over and the queries read (``records``, ``runs``,
``keys``) are written behind (``store.mongo_behind``), the latest version of
each document once a second, however many times it changed meanwhile.

An entry: ``{_id: <slot>, term, writer, zbody}``, where ``zbody`` is one
binary: the zlib-compressed BSON of ``{records: [...], removed: [...], runs:
[...], keys: [...], journal: [...], born: [...]}``, the documents exactly as the
collections hold them. One opaque field, because FerretDB converts every field
of a document to and from its own JSON: a launch's entry of nested documents
took 1.5-2.1 ms to insert, the same bytes as one binary 1.1 ms, as a small
document does (``bench/README.md``). Compressed, because the insert's cost
grows with its bytes (FerretDB/PostgreSQL, idle: 0.8 ms for 1 KB, 4 ms for
50 KB), and the commits are the controller's one serial path: under 64
launches in flight a commit's body was 45 KB, 3.3 KB compressed (zlib level 1:
0.3 ms of the controller's CPU), the records, runs and journal entries of a
batch repeating each other's fields. The replay still reads the two earlier
forms (``body``: the same BSON uncompressed; the documents in the open).
Slots are consecutive integers (a batch of more than ``ITEMS_PER_ENTRY``
documents takes several, in one ordered insert).

The slot is the log's fence. A store numbers its entries after the newest it
has read or written, so a controller deposed by a newer leader, whose next
slot the newer leader has taken, meets a duplicate key: StaleTerm. A slot
taken by an older term means a deposed leader wrote after this store loaded:
StaleTerm too, so that the controller steps down and loads again (the lease
is still its own: it takes over again at once, with that entry). A write that
failed may have left its slot empty; a deposed leader may fill such a gap
later, with an older term than the entries after it: the replay skips every
entry whose term is lower than one before it. The lease fence
(``MongoStore._fenced``) still decides whether an acknowledgement is
trustworthy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from shards_controller.store.base import StaleTerm
from shards_controller.store.documents import Doc
from shards_controller.store.mongo_commands import DUPLICATE_KEY
from shards_controller.store.packed import pack, unpack, unpack_uncompressed

LOG = "log"
# Documents per entry: well below the server's 16 MiB document for ours (about 1 KiB each).
ITEMS_PER_ENTRY = 1000
# An entry's fields outside its body: what the slot's fence and the replay's order read.
_HEADER = ("_id", "term", "writer")
# A journal entry's mark in a stored body: its record is the body's record of that process.
_SAME = "same"


@dataclass(slots=True)
class Changes:
    """Documents by ``_id``, the newest of each, from entries in slot order."""

    records: dict[str, Doc] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    runs: dict[str, Doc] = field(default_factory=dict)
    keys: dict[str, Doc] = field(default_factory=dict)
    journal: dict[int, Doc] = field(default_factory=dict)  # by revision
    slots: dict[str, int] = field(default_factory=dict)  # the slot of each run's and record's newest version
    # Runs and records first written by these changes (a launch, a define): most likely not
    # stored yet, so inserted, not upserted (a tenth of the cost on FerretDB).
    born: set[str] = field(default_factory=set)
    upto: int = 0  # the highest slot these changes include
    term: int = 0  # the newest term among them

    def __len__(self) -> int:
        return len(self.records) + len(self.removed) + len(self.runs) + len(self.keys) + len(self.journal)

    # The reads ``WrittenBehind`` answers too.
    def run(self, run_id: str) -> Doc | None:
        return self.runs.get(run_id)

    def key(self, key: str) -> Doc | None:
        return self.keys.get(key)

    def all_runs(self) -> dict[str, Doc]:
        return self.runs

    def all_journal(self) -> dict[int, Doc]:
        return self.journal

    def add(self, entry: Doc) -> None:
        """Apply one entry's documents over what is here."""
        for doc_id in entry.get("born", ()):
            if doc_id not in self.runs and doc_id not in self.records:
                self.born.add(doc_id)
        for doc in entry.get("records", ()):
            self.removed.discard(doc["_id"])
            self.records[doc["_id"]] = doc
            self.slots[doc["_id"]] = int(entry["_id"])
        for record_id in entry.get("removed", ()):
            self.records.pop(record_id, None)
            self.removed.add(record_id)
        for doc in entry.get("runs", ()):
            self.runs[doc["_id"]] = doc
            self.slots[doc["_id"]] = int(entry["_id"])
        for doc in entry.get("keys", ()):
            self.keys[doc["_id"]] = doc
        for doc in entry.get("journal", ()):
            self.journal[doc["_id"]] = doc
        self.upto = max(self.upto, int(entry["_id"]))
        self.term = max(self.term, int(entry["term"]))

    def beneath(self, newer: Changes) -> Changes:
        """``newer`` over these (what a failed write-behind puts back under what came since)."""
        merged = Changes(
            records={**self.records, **newer.records},
            removed=(self.removed - newer.records.keys()) | newer.removed,
            runs={**self.runs, **newer.runs},
            keys={**self.keys, **newer.keys},
            journal={**self.journal, **newer.journal},
            slots={**self.slots, **newer.slots},
            born=self.born | newer.born,
            upto=max(self.upto, newer.upto),
            term=max(self.term, newer.term),
        )
        for record_id in newer.removed:
            merged.records.pop(record_id, None)
        return merged

    def restamped(self, term: int) -> Changes:
        """The same documents, each as written by ``term`` (a new leader's own, see ``MongoStore._load``)."""
        return Changes(
            records={k: _stamped(d, term) for k, d in self.records.items()},
            removed=set(self.removed),
            runs={k: _stamped(d, term) for k, d in self.runs.items()},
            keys={k: _stamped(d, term) for k, d in self.keys.items()},
            journal={k: _stamped(d, term) for k, d in self.journal.items()},
            slots=dict(self.slots),
            born=set(self.born),
            upto=self.upto,
            term=max(self.term, term),
        )


def _stamped(doc: Doc, term: int) -> Doc:
    return {**doc, "term": max(int(doc.get("term", 0)), term)}


def entries(
    records: list[Doc],
    removed: list[str],
    runs: list[Doc],
    keys: list[Doc],
    journal: list[Doc],
    born: set[str],
) -> list[Doc]:
    """A batch's documents as log entries (no slot yet), ``ITEMS_PER_ENTRY`` at most each.
    ``born``: the ids of the runs and records most likely new (a launch's run, a define's records)."""
    items: list[tuple[str, Any]] = []
    for doc in records:
        if doc["_id"] in born:
            items.append(("born", doc["_id"]))
        items.append(("records", doc))
    items += [("removed", r) for r in removed]
    for doc in runs:
        if doc["_id"] in born:
            items.append(("born", doc["_id"]))
        items.append(("runs", doc))
    items += [("keys", d) for d in keys]
    items += [("journal", d) for d in journal]
    out: list[Doc] = []
    for start in range(0, len(items), ITEMS_PER_ENTRY):
        entry: Doc = {}
        for kind, item in items[start : start + ITEMS_PER_ENTRY]:
            entry.setdefault(kind, []).append(item)
        out.append(entry)
    return out


class CommitLog:
    """The log's slots, as one store writes them (one batch at a time: ``lock``)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db
        self.lock = asyncio.Lock()
        self.writer_id = uuid.uuid4().hex
        self._next: int | None = None  # the next slot to write; None until read
        self._term = 0  # the newest term this store has seen in the log

    def seen(self, slot: int, term: int) -> None:
        """The log holds ``slot`` (or everything up to it was applied), written by ``term``."""
        self._next = max(self._next or 1, slot + 1)
        self._term = max(self._term, term)

    async def claim(self, count: int, term: int, applied: Callable[[], Awaitable[int]]) -> list[int]:
        """``count`` consecutive slots for a batch of ``term`` (under ``lock``). A failed insert
        leaves its slots behind: a store never writes a slot twice."""
        if self._next is None:
            newest = await self._db[LOG].find_one({}, {"_id": 1, "term": 1}, sort=[("_id", DESCENDING)])
            if newest is not None:
                self.seen(int(newest["_id"]), int(newest["term"]))
            self.seen(await applied(), 0)
        if term < self._term:
            raise StaleTerm(f"term {term} is stale: term {self._term} wrote the commit log")
        assert self._next is not None
        first = self._next
        self._next += count
        self._term = term
        return list(range(first, first + count))

    async def insert(self, docs: list[Doc], term: int) -> None:
        """Insert entries (slots given), in order; a slot taken by another writer is StaleTerm."""
        try:
            await self._db[LOG].insert_many([_encoded(doc) for doc in docs], ordered=True)
        except BulkWriteError as error:
            if not any(e.get("code") == DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
                raise
            slots = [doc["_id"] for doc in docs]
            other = await self._db[LOG].find_one(
                {"_id": {"$in": slots}, "writer": {"$ne": self.writer_id}}, {"term": 1}
            )
            if other is not None and int(other["term"]) > term:
                slot, newer = other["_id"], other["term"]
                raise StaleTerm(
                    f"term {term} is stale: commit log slot {slot} was written by term {newer}"
                ) from None
            found = f"slot {other['_id']} by term {other['term']}" if other is not None else "a slot"
            raise StaleTerm(
                f"the commit log moved on since this controller read it ({found}): it must load it again"
            ) from None

    async def replay(self, after: int) -> tuple[Changes, int]:
        """The entries above slot ``after`` merged in slot order, and the newest slot read. An entry
        of an older term than one before it (a deposed leader's, in a gap) is skipped."""
        changes = Changes(upto=after)
        newest = after
        cursor = self._db[LOG].find({"_id": {"$gt": after}}).sort("_id", ASCENDING)
        async for entry in cursor:
            newest = int(entry["_id"])
            if int(entry["term"]) >= changes.term:
                changes.add(_decoded(entry))
        self.seen(newest, changes.term)
        return changes, newest

    async def prune(self, upto: int) -> None:
        """Drop the entries up to slot ``upto``: their changes are all written behind."""
        await self._db[LOG].delete_many({"_id": {"$lte": upto}})


def _encoded(entry: Doc) -> Doc:
    """An entry as stored: its header, and the rest as one compressed binary (the module's docstring).
    A journal entry whose record is the version the entry's ``records`` hold says so (``same``)
    instead of holding it again: a third of a busy commit's BSON to encode."""
    header = {name: entry[name] for name in _HEADER}
    body = {name: value for name, value in entry.items() if name not in _HEADER}
    if "journal" in body and "records" in body:
        revisions = {(doc["scope_id"], doc["process_id"]): doc["revision"] for doc in body["records"]}
        body["journal"] = [_referenced(doc, revisions) for doc in body["journal"]]
    return {**header, "zbody": pack(body)}


def _referenced(journal: Doc, revisions: dict[tuple[str, str], int]) -> Doc:
    record = journal["record"]
    if record is None or revisions.get((journal["scope_id"], journal["process_id"])) != record["revision"]:
        return journal
    return {**journal, "record": None, _SAME: True}


def _dereferenced(body: Doc) -> Doc:
    if any(_SAME in doc for doc in body.get("journal", ())):
        records = {(doc["scope_id"], doc["process_id"]): doc for doc in body["records"]}
        body["journal"] = [
            {**doc, "record": _record_fields(records[doc["scope_id"], doc["process_id"]])}
            if doc.pop(_SAME, False)
            else doc
            for doc in body["journal"]
        ]
    return body


def _record_fields(record_doc: Doc) -> Doc:
    """A record's document as a journal entry holds it: without the collection's ``_id`` and ``term``."""
    return {name: value for name, value in record_doc.items() if name not in ("_id", "term")}


def _decoded(stored: Doc) -> Doc:
    """An entry as ``_encoded`` stored it (or as earlier versions did: ``body`` uncompressed, or
    its fields in the open)."""
    if "zbody" in stored:
        body = _dereferenced(unpack(stored["zbody"]))
    elif "body" in stored:
        body = unpack_uncompressed(stored["body"])
    else:
        return stored
    return {**body, **{n: stored[n] for n in _HEADER}}
