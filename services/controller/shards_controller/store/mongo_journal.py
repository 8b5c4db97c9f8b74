"""The MongoDB store's journal and its head (a part of ``MongoStore``).

FerretDB 1.24 serves a filter on ``_id`` alone from an index; "the newest", a
sort or a range fetches and sorts the whole collection in FerretDB. Finding the
journal's newest revision that way took a new leader 2-6 s on a busy machine
with 20,000 entries (``journal_keep`` allows 200,000), and the take-over waited
for it. So a take-over reads one document instead: the **head**, ``_id`` ``~head``
in ``records`` (a record's ``_id`` is a JSON array, so it starts with ``[``):

- ``revision``: the highest revision written. Every group commit raises it
  (``$max``) in the first statement of its records' ``update`` command: no
  extra round trip. A batch with no record to upsert (removals, journal
  entries alone) sends that statement on its own.
- ``journal_floor``: every journal entry above it is still stored. Pruning
  raises it before it deletes, so a crash in between costs a resume a RESET,
  never a silent gap.

A torn batch can store journal entries without its records' command, head
included: the head is then behind by at most one batch, and a new leader
numbers from ``max_revision`` plus ``REVISION_GAP`` (a million) anyway. A store
written before the head existed has none: ``max_revision`` and
``journal_floor`` then fall back to the scans they replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from shards_controller.store.base import JournalEntry, WriteBatch
from shards_controller.store.documents import Doc, journal_from_doc
from shards_controller.store.mongo_commands import WRITE_CONCERN, Writer

HEAD_ID = "~head"


def head_statement(batch: WriteBatch) -> Doc | None:
    """The ``update`` statement that raises the head to ``batch``'s highest revision."""
    revisions = [entry.revision for entry in batch.journal] + [record.revision for record in batch.records]
    if not revisions:
        return None
    return {"q": {"_id": HEAD_ID}, "u": {"$max": {"revision": max(revisions)}}, "upsert": True}


class _Store(Protocol):
    @property
    def db(self) -> AsyncDatabase[Doc]: ...

    @property
    def _write(self) -> Writer: ...


class MongoJournal:
    async def _raise_head(self: _Store, statement: Doc) -> None:
        """The head's statement alone, for a batch whose records' command does not carry it."""
        command = {"update": "records", "updates": [statement], "writeConcern": WRITE_CONCERN.document}
        await self.db.command(command)

    def head_writes(
        self: _Store, batch: WriteBatch, records_upserted: bool
    ) -> tuple[Doc | None, list[Coroutine[Any, Any, None]]]:
        """The head's statement for the records' upsert, or a write of its own when there is none."""
        statement = head_statement(batch)
        if statement is None or records_upserted:
            return statement, []
        return None, [MongoJournal._raise_head(self, statement)]

    async def _head(self: _Store) -> Doc | None:
        return await self.db.records.find_one({"_id": HEAD_ID})

    async def journal_since(self: _Store, revision: int, limit: int) -> list[JournalEntry]:
        if limit == 0:
            return []
        cursor = self.db.journal.find({"_id": {"$gt": revision}}).sort("_id", ASCENDING)
        if limit > 0:
            cursor = cursor.limit(limit)
        return [journal_from_doc(doc) async for doc in cursor]

    async def max_revision(self: _Store) -> int:
        head = await MongoJournal._head(self)
        if head is not None:
            return int(head.get("revision", 0))
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
        newest = int(head.get("revision", 0)) if head is not None else await MongoJournal.max_revision(self)
        floor = newest - max(keep_last, 0)
        if floor <= 0 or (head is not None and int(head.get("journal_floor", 0)) >= floor):
            return
        await self.db.records.update_one({"_id": HEAD_ID}, {"$max": {"journal_floor": floor}}, upsert=True)
        await self.db.journal.delete_many({"_id": {"$lte": floor}})
