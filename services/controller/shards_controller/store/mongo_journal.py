"""The MongoDB store's journal and its head (a part of ``MongoStore``).

FerretDB 1.24 serves a filter on ``_id`` alone from an index; "the newest", a
sort or a range fetches and sorts the whole collection in FerretDB. Finding the
journal's newest revision that way took a new leader 2-6 s on a busy machine
with 20,000 entries (``journal_keep`` allows 200,000), and the take-over waited
for it. So a take-over reads one document instead: the **head**, ``_id`` ``~head``
in ``records`` (a record's ``_id`` is a JSON array, so it starts with ``[``):

- ``revision``: a ceiling at or above every revision written. A group commit
  that would write above it raises it (``$max``) to its own highest revision
  plus ``HEAD_RESERVE``, in a statement of its own sent with the batch's other
  commands; the next commits, up to that ceiling, do not write the head at all.
  On FerretDB an update is its costliest command (a find and a write, about
  2 ms of its and PostgreSQL's CPU): writing the head in every commit cost a
  launch one of its four commands.
- ``journal_floor``: every journal entry above it is still stored. Pruning
  raises it before it deletes, so a crash in between costs a resume a RESET,
  never a silent gap.

The journal's entries are written behind from the commit log, as the records
are (``store.mongo_behind``); ``MongoStore.journal_since`` reads both. A
write-behind round inserts its entries as pages: ``{_id: <the highest revision
in it>, zbody}``, the compressed BSON of ``{entries: [...]}``, up to
``PAGE_ENTRIES`` each. An entry inserted one document each cost the store
servers a third of their CPU under sustained launches (three entries a launch;
``bench/README.md``). Keyed by its highest revision, a page is found by the
same ``{_id: {$gt: revision}}`` as an entry of its own was (earlier versions
wrote those; both are read), and pruned by the same ``{_id: {$lte: floor}}``
(a page across the floor stays whole until its highest revision is below it,
and ``journal_since`` returns none of its entries at or below the floor).
Pages do not overlap but for a take-over's: a new leader writes again the
entries it replayed from the log, which a deposed leader's late round may have
written too, the same entries.

A torn batch can store its log entry (journal entries and records) without the head's raise:
they are then above the stored ceiling by at most that batch's span (the next
commit sends the raise again), and a new leader numbers from ``max_revision``
plus ``REVISION_GAP`` (a million, ten times ``HEAD_RESERVE``) anyway. A store
written before the head existed has none: ``max_revision`` and
``journal_floor`` then fall back to the scans they replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from shards_controller.store.base import JournalEntry, WriteBatch
from shards_controller.store.documents import Doc, journal_from_doc
from shards_controller.store.mongo_commands import WRITE_CONCERN, Writer
from shards_controller.store.packed import pack, unpack

HEAD_ID = "~head"
# How far above a commit's highest revision the head's ceiling is raised: a tenth
# of ``takeover.REVISION_GAP``, so a new leader still numbers above everything.
HEAD_RESERVE = 100_000
PAGE_ENTRIES = 1000  # a few milliseconds to compress, a turn of the loop each


def highest_revision(batch: WriteBatch) -> int:
    """The batch's highest revision (0 when it has none)."""
    return max(
        [entry.revision for entry in batch.journal] + [record.revision for record in batch.records] + [0]
    )


class _Store(Protocol):
    _ceiling: int
    _newest_written: int

    @property
    def db(self) -> AsyncDatabase[Doc]: ...

    @property
    def _write(self) -> Writer: ...


class MongoJournal:
    # The ceiling this store has stored (or read) in the head, and the highest
    # revision it has written: what pruning counts back from.
    _ceiling = 0
    _newest_written = 0

    def head_write(self: _Store, batch: WriteBatch) -> tuple[int, Coroutine[Any, Any, None] | None]:
        """The batch's highest revision, and the head's raise when it goes above the ceiling."""
        highest = highest_revision(batch)
        if highest <= self._ceiling:
            return highest, None
        return highest, MongoJournal._raise_head(self, highest + HEAD_RESERVE)

    def written(self: _Store, highest: int, raised: bool) -> None:
        """After a batch was stored: what it wrote, and whether it raised the head."""
        self._newest_written = max(self._newest_written, highest)
        if raised:
            self._ceiling = max(self._ceiling, highest + HEAD_RESERVE)

    async def _raise_head(self: _Store, ceiling: int) -> None:
        statement = {"q": {"_id": HEAD_ID}, "u": {"$max": {"revision": ceiling}}, "upsert": True}
        command = {"update": "records", "updates": [statement], "writeConcern": WRITE_CONCERN.document}
        await self.db.command(command)

    async def _head(self: _Store) -> Doc | None:
        return await self.db.records.find_one({"_id": HEAD_ID})

    async def journal_since(self: _Store, revision: int, limit: int) -> list[JournalEntry]:
        if limit == 0:
            return []
        head = await MongoJournal._head(self)
        # A page across the floor keeps the entries below it: they are not returned.
        revision = max(revision, int(head.get("journal_floor", 0)) if head is not None else 0)
        cursor = self.db.journal.find({"_id": {"$gt": revision}}).sort("_id", ASCENDING)
        found: dict[int, JournalEntry] = {}
        async for doc in cursor:
            for entry in unpack(doc["zbody"])["entries"] if "zbody" in doc else [doc]:
                if entry["_id"] > revision:
                    found[entry["_id"]] = journal_from_doc(entry)
            # A later page holds no entry below the ones here that is not here too (above).
            if 0 < limit <= len(found):
                break
        ordered = [found[rev] for rev in sorted(found)]
        return ordered[:limit] if limit > 0 else ordered

    async def max_revision(self: _Store) -> int:
        head = await MongoJournal._head(self)
        if head is not None:
            ceiling = int(head.get("revision", 0))
            self._ceiling = max(self._ceiling, ceiling)
            return ceiling
        db = self.db  # written before the head existed (see the module's docstring)
        journal, record = await asyncio.gather(
            db.journal.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)]),
            db.records.find_one({}, {"revision": 1}, sort=[("revision", DESCENDING)]),
        )
        return max(
            int(journal["_id"]) if journal is not None else 0,
            int(record.get("revision") or 0) if record is not None else 0,
        )

    async def journal_floor(self: _Store) -> int:
        head = await MongoJournal._head(self)
        if head is not None:
            return int(head.get("journal_floor", 0))
        oldest = await MongoJournal.journal_since(self, 0, 1)
        return oldest[0].revision - 1 if oldest else 0

    async def prune_journal(self: _Store, keep_last: int) -> None:
        """Keep the entries of the newest ``keep_last`` revisions (fewer entries where a
        revision was progress, which is not journaled): no sort, one delete by range."""
        head = await MongoJournal._head(self)
        # Counted back from the newest revision this store wrote; one that has written nothing
        # yet (just after a take-over) counts from below the head's ceiling: it keeps more.
        newest = self._newest_written
        if not newest:
            if head is not None:
                newest = int(head.get("revision", 0)) - HEAD_RESERVE
            else:
                newest = await MongoJournal.max_revision(self)
        floor = newest - max(keep_last, 0)
        if floor <= 0 or (head is not None and int(head.get("journal_floor", 0)) >= floor):
            return
        await self.db.records.update_one({"_id": HEAD_ID}, {"$max": {"journal_floor": floor}}, upsert=True)
        await self.db.journal.delete_many({"_id": {"$lte": floor}})


def journal_pages(entries: list[Doc]) -> Iterator[Doc]:
    """Entries (documents) as the journal's pages (the module's docstring), each compressed as it
    is taken: the write-behind lets the loop run between them."""
    ordered = sorted(entries, key=lambda entry: int(entry["_id"]))
    for start in range(0, len(ordered), PAGE_ENTRIES):
        part = ordered[start : start + PAGE_ENTRIES]
        yield {"_id": part[-1]["_id"], "zbody": pack({"entries": part})}
