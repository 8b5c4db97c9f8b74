"""The MongoDB store's process records, written behind as compressed pages and folded into chunks.

A record changes at every launch, start and end of its process. Written behind
one document each, that was an update a launch: on FerretDB a find and a write,
0.45-0.58 ms of the servers' CPU and 0.13-0.17 ms of the driver's each, most of
what held sustained launches near 450/s (``bench/README.md``). Nothing reads a
record by its ``_id``: the controller holds them all, and a take-over loads them
all. So a write-behind round inserts the newest version of each record it
writes, and the ids of those removed, as one page (``record_pages``: ``{_id:
<key>, zbody}``, the zlib-compressed BSON of ``{records, removed}``), and a
take-over reads:

1. the snapshot (``records``' ``~snapshot``: ``{covers: <key>, chunks: [...]}``):
   chunks of ``record_chunks``, each up to ``CHUNK_RECORDS`` records compressed
   (``zbody``), with their ids apart (``zids``); before the first snapshot, the
   records' own documents in ``records`` (what earlier versions wrote);
2. over them, every page whose key is above the snapshot's ``covers``, in key
   order;
3. over those, the commit log above ``applied`` (``store.mongo``).

A page's key is ``(term, upto, seq)``, zero-padded in a string so that it sorts
as a tuple: the writer's term, the highest log slot its round included, and
the writer's count of pages. Within a term a later page holds the newer version
of each record it holds. A newer term's page goes over every page of an older
term: its leader replayed the log above ``applied`` when it took over, so it
knows every version an older leader could have noted (a deposed leader notes a
change only once its log entry was acknowledged within its lease, before any
take-over), and its pages write them again.

Compaction. Once the pages hold ``COMPACT_AT`` versions or more (``PAGES_AT``
pages), the leader's write-behind folds them into a new snapshot, the oldest
pages first, about ``COMPACT_AT`` versions at a time (what it holds in memory:
a define of 100,000 records is folded in ten compactions): the chunks
that none of their records touch are kept as they are, the others rewritten
(a chunk's ``zids`` tells which without its body), new records go to new
chunks. The new chunks are inserted, then the snapshot document is swapped,
conditional on the one the compaction read (a compare-and-set on ``covers``),
then the chunks it no longer names and the pages it covers are deleted. A
compaction that lost the swap (another leader's came first) deletes nothing:
its chunks are left unnamed, never read. Every write is an insert but the swap,
one update by ``_id``, and the deletes. A load checks that the snapshot did not
change while it read (the pages a swap covers are deleted only after it), and
reads again if it did.

What it costs: a page per round (1 KB compressed for 25 records); a compaction
decodes the chunks its pages touch and the pages, and writes those chunks: about
a second of the controller's CPU per 10,000 versions at 100,000 records, in place
of 20,000 updates.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import bson
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shards_controller.store.documents import Doc
from shards_controller.store.mongo_journal import HEAD_ID
from shards_controller.store.packed import COMPRESSION_LEVEL, pack, unpack

PAGES = "record_pages"
CHUNKS = "record_chunks"
SNAPSHOT_ID = "~snapshot"
# Records a chunk holds: about 60 KB compressed, a 16th of FerretDB's insert cost at 50 KB a record.
CHUNK_RECORDS = 1000
# Records a page holds at most (a define of many: its round is several pages, one key apart).
PAGE_RECORDS = 5000
COMPACT_AT = 10_000
PAGES_AT = 300
LOAD_TRIES = 20

T = TypeVar("T")
Fenced = Callable[[int, list[Coroutine[Any, Any, None]]], Awaitable[None]]


def page_key(term: int, upto: int, seq: int) -> str:
    """A page's ``_id``: sorts as the tuple does (terms and slots below 10^12, counts below 10^9)."""
    return f"{term:012d}.{upto:012d}.{seq:09d}"


def _pack_ids(ids: list[str]) -> bson.Binary:
    return bson.Binary(zlib.compress("\n".join(ids).encode(), COMPRESSION_LEVEL))


def _unpack_ids(binary: bytes) -> set[str]:
    text = zlib.decompress(bytes(binary)).decode()
    return set(text.split("\n")) if text else set()


def chunk_doc(chunk_id: str, records: list[Doc]) -> Doc:
    """A chunk as stored: its records' ids apart, to tell whether a page touches it undecoded."""
    ids = [doc["_id"] for doc in records]
    return {"_id": chunk_id, "zids": _pack_ids(ids), "zbody": pack({"records": records})}


def snapshot_doc(snapshot: Snapshot, term: int) -> Doc:
    return {"_id": SNAPSHOT_ID, "covers": snapshot.covers, "chunks": list(snapshot.chunks), "term": term}


@dataclass(frozen=True, slots=True)
class Snapshot:
    covers: str  # the key of the newest page folded in
    chunks: tuple[str, ...]


@dataclass(slots=True)
class _Folded:
    """Pages merged in key order: the newest version of each record, the ids removed since."""

    newer: dict[str, Doc]
    gone: set[str]
    covers: str
    page_ids: list[str]
    versions: int

    def touches(self, ids: set[str]) -> bool:
        return not (self.newer.keys().isdisjoint(ids) and self.gone.isdisjoint(ids))


class RecordPages:
    """The records' pages, snapshot and chunks, as one store writes and reads them."""

    def __init__(self, db: AsyncDatabase[Doc], fenced: Fenced) -> None:
        self._db = db
        self._fenced = fenced
        self._seq = 0
        # Versions in the pages above the snapshot, as far as this store knows (read by its
        # last load, written since): what makes a compaction due.
        self.versions = 0
        self._pages = 0

    # -- writing

    def write(
        self, records: list[Doc], removed: list[str], term: int, upto: int
    ) -> Coroutine[Any, Any, None]:
        """The insert of a round's records as pages (to run under the round's fence)."""
        pages: list[Doc] = []
        for start in range(0, max(len(records), 1), PAGE_RECORDS):
            self._seq += 1
            body = {
                "records": records[start : start + PAGE_RECORDS],
                "removed": removed if start == 0 else [],
            }
            pages.append({"_id": page_key(term, upto, self._seq), "zbody": pack(body)})
        self.versions += len(records) + len(removed)
        self._pages += len(pages)
        return self._insert(pages)

    async def _insert(self, pages: list[Doc]) -> None:
        await self._db[PAGES].insert_many(pages, ordered=True)

    @property
    def due(self) -> bool:
        return self.versions >= COMPACT_AT or self._pages >= PAGES_AT

    # -- reading

    async def load(self, convert: Callable[[Doc], T]) -> dict[str, T]:
        """Every record, by ``_id``, as the snapshot and the pages above it hold them."""
        for _ in range(LOAD_TRIES):
            snapshot = await self.snapshot()
            found: dict[str, T] = {}
            if snapshot is None:
                async for doc in self._db.records.find({}):
                    if not str(doc["_id"]).startswith("~"):
                        found[doc["_id"]] = convert(doc)
            else:
                chunks = 0
                async for chunk in self._db[CHUNKS].find({"_id": {"$in": list(snapshot.chunks)}}):
                    chunks += 1
                    found.update((doc["_id"], convert(doc)) for doc in unpack(chunk["zbody"])["records"])
                if chunks != len(snapshot.chunks):
                    continue  # a compaction swapped the snapshot and deleted chunks meanwhile
            pages = await self._pages_above(snapshot)
            if await self.snapshot() != snapshot:
                continue  # ... or swapped it, and may have deleted the pages it covers
            versions = 0
            for page in pages:
                body = unpack(page["zbody"])
                found.update((doc["_id"], convert(doc)) for doc in body["records"])
                for record_id in body["removed"]:
                    found.pop(record_id, None)
                versions += len(body["records"]) + len(body["removed"])
            self.versions, self._pages = versions, len(pages)
            return found
        raise RuntimeError("the records' snapshot changed all along the load: load again")

    async def snapshot(self) -> Snapshot | None:
        doc = await self._db.records.find_one({"_id": SNAPSHOT_ID})
        return Snapshot(doc["covers"], tuple(doc["chunks"])) if doc is not None else None

    async def _pages_above(self, snapshot: Snapshot | None) -> list[Doc]:
        # The pages are few (a compaction follows ``PAGES_AT``): read whole, ordered here.
        pages = [page async for page in self._db[PAGES].find({})]
        covers = snapshot.covers if snapshot is not None else ""
        return sorted((page for page in pages if page["_id"] > covers), key=lambda page: page["_id"])

    # -- compaction

    async def compact(self, term: int) -> bool:
        """Fold the pages into a new snapshot (the module's docstring); whether it was swapped in."""
        snapshot = await self.snapshot()
        folded = _fold(await self._pages_above(snapshot))
        if folded is None:
            return False
        written: list[str] = []  # the new chunks' ids
        kept: list[str] = []
        dropped: list[str] = []

        async def add(docs: list[Doc]) -> None:
            chunk_id = f"{folded.covers}.{len(written):06d}"
            await self._fenced(term, [self._insert_chunk(chunk_doc(chunk_id, docs))])
            written.append(chunk_id)

        if snapshot is None:  # the first: from the records' own documents
            group: list[Doc] = []
            async for doc in self._db.records.find({"_id": {"$nin": [HEAD_ID, SNAPSHOT_ID]}}):
                if doc["_id"] not in folded.gone:
                    group.append(folded.newer.pop(doc["_id"], doc))
                if len(group) == CHUNK_RECORDS:
                    await add(group)
                    group = []
            if group:
                await add(group)
        else:
            touched: list[str] = []
            async for chunk in self._db[CHUNKS].find({"_id": {"$in": list(snapshot.chunks)}}, {"zids": 1}):
                (touched if folded.touches(_unpack_ids(chunk["zids"])) else kept).append(chunk["_id"])
            if len(touched) + len(kept) != len(snapshot.chunks):
                return False  # another compaction swapped it meanwhile
            for chunk_id in touched:
                whole = await self._db[CHUNKS].find_one({"_id": chunk_id})
                if whole is None:
                    return False
                docs = [
                    folded.newer.pop(doc["_id"], doc)
                    for doc in unpack(whole["zbody"])["records"]
                    if doc["_id"] not in folded.gone
                ]
                if docs:
                    await add(docs)
                dropped.append(chunk_id)
        new = list(folded.newer.values())
        for start in range(0, len(new), CHUNK_RECORDS):
            await add(new[start : start + CHUNK_RECORDS])
        swapped = Snapshot(folded.covers, tuple(kept + written))
        if not await self._swap(term, snapshot, swapped):
            return False
        self.versions = max(0, self.versions - folded.versions)
        self._pages = max(0, self._pages - len(folded.page_ids))
        deletes = [self._delete(CHUNKS, dropped), self._delete(PAGES, folded.page_ids)]
        if snapshot is None:
            deletes.append(self._delete_legacy())
        await self._fenced(term, deletes)
        return True

    async def _insert_chunk(self, chunk: Doc) -> None:
        await self._db[CHUNKS].insert_one(chunk)

    async def _swap(self, term: int, old: Snapshot | None, new: Snapshot) -> bool:
        doc = snapshot_doc(new, term)
        swapped = True

        async def swap() -> None:
            nonlocal swapped
            if old is None:
                try:
                    await self._db.records.insert_one(doc)
                except DuplicateKeyError:
                    swapped = False
                return
            result = await self._db.records.replace_one({"_id": SNAPSHOT_ID, "covers": old.covers}, doc)
            swapped = result.matched_count == 1

        await self._fenced(term, [swap()])
        return swapped

    async def _delete(self, collection: str, ids: list[str]) -> None:
        if ids:
            await self._db[collection].delete_many({"_id": {"$in": ids}})

    async def _delete_legacy(self) -> None:
        """The records' own documents, which the first snapshot holds now."""
        await self._db.records.delete_many({"_id": {"$nin": [HEAD_ID, SNAPSHOT_ID]}})


def _fold(pages: list[Doc]) -> _Folded | None:
    """The oldest pages, up to about ``COMPACT_AT`` versions: what a compaction holds in memory
    stays bounded (a define of 100,000 is folded in several)."""
    if not pages:
        return None
    folded = _Folded({}, set(), "", [], 0)
    for page in pages:
        if folded.versions >= COMPACT_AT:
            break
        folded.covers = page["_id"]
        body = unpack(page["zbody"])
        for doc in body["records"]:
            folded.newer[doc["_id"]] = doc
            folded.gone.discard(doc["_id"])
        for record_id in body["removed"]:
            folded.newer.pop(record_id, None)
            folded.gone.add(record_id)
        folded.page_ids.append(page["_id"])
        folded.versions += len(body["records"]) + len(body["removed"])
    return folded
