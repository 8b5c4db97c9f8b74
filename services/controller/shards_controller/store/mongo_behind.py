"""Writing the commit log's changes behind, into the collections a take-over and the queries read.

A group commit inserts its changes into the log (``store.mongo_log``) and notes
them here. Once a second (at once past ``FLUSH_AT`` documents), the newest
version of each noted document is written: runs and keys to ``runs`` and
``keys``, by ``_id`` and fenced as every write is (``Writer``); records as one
page (``store.mongo_pages``) and the journal's entries as pages of
``journal`` (``store.mongo_journal``), inserts both: a run launched and ended
within the second is one insert, a record changed ten times one version in a
page. Then the head's ``applied`` is raised to the highest slot written, and
the log is pruned up to it; once the records' pages hold enough, they are
folded into a new snapshot (``RecordPages.compact``).

Until then the changes are read from here: ``MongoStore`` looks a run or a key
up here first, and merges the runs and journal entries here into ``list_runs``
and ``journal_since``. A take-over loads
the collections, then replays the log above ``applied`` over them
(``MongoStore._load``), and notes what it replayed as its own, stamped with its
term, so that its next write-behind rewrites it: a deposed leader's late
write-behind (a version older than the log's newest) is overwritten, or, on
a server that serves the per-document fence, refused; its records' page sorts
below the newer term's.

A run still active, launched less than ``HOLD_ACTIVE_S`` ago and whose newest
version is in the newest ``HOLD_MOST_SLOTS`` slots of the log, is held back,
and its process's record with it (the record's newest version is that run's):
not written, and the log kept from their newest versions on (``applied``
stops below them), so that the run is written once, when it has ended, by an
insert, and the record once. A run active for longer, or further back in the
log, is written as it is (its end is then an update): the slots bound what a
take-over replays, at most ``HOLD_MOST_SLOTS`` entries beyond the last
write-behind, whatever the rate. That costs a take-over's reads 1.0 s at
worst on FerretDB/PostgreSQL (1,000 entries of 9 launches; 0.2 s for 250:
``python -m bench.replay``); at 500 slots the rate below was 540-620/s, not
620-670/s.

Why hold at all: on FerretDB an update of a stored run is a find and a write
(about 0.8 ms of the servers' CPU on PostgreSQL; a scan of ``runs`` on SQLite,
37 ms at 4,000 documents), where an insert is a fraction of that. Under 64
launches in flight a record was written as ``scheduled`` or ``running`` and
again when its run ended: two updates a launch (``pg_stat_user_tables``:
20,212 for 10,000 launches), before runs were held. Why by slots rather than
by seconds alone: a queue is what keeps runs active longest. 10,000 launches in
a row are accepted at 1,300/s and started at 700/s, so the last wait about 7 s
in the queue; held for 5 s, half of them were written as ``scheduled`` and
updated at their end, and the rate fell from 700 to 470/s, the store servers at
0.47 of a core against 0.31 (``python -m bench.commit_path --launches 10000``,
ninth session).

A crash loses nothing: what is noted here is in the log. A write-behind that
fails puts its changes back under the ones noted since, and is tried again;
one fenced off (StaleTerm) drops them: a newer leader replays them from the log.
Past ``MOST_BEHIND`` documents, a commit waits for the write-behind to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shards._aio import cancel_and_wait
from shards_controller.store.base import StaleTerm
from shards_controller.store.documents import Doc
from shards_controller.store.mongo_commands import Writer, partition
from shards_controller.store.mongo_journal import HEAD_ID, journal_pages
from shards_controller.store.mongo_log import Changes, CommitLog
from shards_controller.store.mongo_pages import RecordPages

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
FLUSH_AT = 2_000
MOST_BEHIND = 20_000
HOLD_ACTIVE_S = 30.0
HOLD_MOST_SLOTS = 1_000

Fenced = Callable[[int, list[Coroutine[Any, Any, None]]], Awaitable[None]]


class WrittenBehind:
    def __init__(
        self,
        db: AsyncDatabase[Doc],
        writer: Writer,
        fenced: Fenced,
        log_: CommitLog,
        pages: RecordPages,
        every_s: float,
    ) -> None:
        self._db = db
        self._pages = pages
        self._writer = writer
        self._fenced = fenced
        self._log = log_
        self._every_s = every_s
        self._noted = Changes()
        # Runs and records of ``_noted`` held back (not counted against FLUSH_AT and MOST_BEHIND).
        self._held_back = 0
        self._writing: Changes | None = None
        self._term = 0  # of the last round written: the records' compaction is fenced by it
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what is behind, read before the collections

    def run(self, run_id: str) -> Doc | None:
        return self._newest("runs", run_id)

    def key(self, key: str) -> Doc | None:
        return self._newest("keys", key)

    def all_runs(self) -> dict[str, Doc]:
        """Every run behind, the newest version of each."""
        older = self._writing.runs if self._writing is not None else {}
        return {**older, **self._noted.runs}

    def all_journal(self) -> dict[int, Doc]:
        """Every journal entry behind, by revision."""
        older = self._writing.journal if self._writing is not None else {}
        return {**older, **self._noted.journal}

    def _newest(self, kind: str, doc_id: str) -> Doc | None:
        for changes in (self._noted, self._writing):
            if changes is not None:
                doc: Doc | None = getattr(changes, kind).get(doc_id)
                if doc is not None:
                    return doc
        return None

    # -- noting and writing

    def note(self, entries: list[Doc]) -> None:
        for entry in entries:
            self._noted.add(entry)
        self._start()
        if len(self._noted) - self._held_back >= FLUSH_AT:
            self._kick.set()

    def take(self, replayed: Changes) -> None:
        """Changes a take-over's load replayed from the log: the newest there are (what this store
        noted before, in an earlier leadership, and could not write, is older)."""
        self._noted = self._noted.beneath(replayed)
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_periodically(), name="mongo-write-behind")

    async def room(self) -> None:
        """Wait, when too much is behind, until it is written."""
        if len(self._noted) - self._held_back >= MOST_BEHIND:
            await self.flush()

    async def applied(self) -> int:
        head = await self._db.records.find_one({"_id": HEAD_ID}, {"applied": 1})
        return int(head.get("applied", 0)) if head is not None else 0

    async def flush(self) -> None:
        """Write what is noted now (raises what the write raised)."""
        async with self._lock:
            changes, self._noted = self._noted, Changes()
            if not changes:
                return
            self._writing = changes
            try:
                held = await self._write(changes)
            except StaleTerm:
                raise  # fenced off: a newer leader replays these from the log
            except BaseException:
                self._noted = changes.beneath(self._noted)
                raise
            else:
                self._noted, self._held_back = held.beneath(self._noted), len(held.runs) + len(held.records)
                self._term = changes.term
            finally:
                self._writing = None

    async def _write(self, changes: Changes) -> Changes:
        """Write ``changes`` but the runs and records held back (the module's docstring); those, to
        note again."""
        db, writer, term = self._db, self._writer, changes.term
        young = datetime.now(UTC) - timedelta(seconds=HOLD_ACTIVE_S)
        recent = changes.upto - HOLD_MOST_SLOTS  # the log kept for them: at most that many slots
        held = Changes(term=term)
        for run_id, doc in changes.runs.items():
            if doc.get("active") and doc["created_ts"] > young and changes.slots[run_id] > recent:
                held.runs[run_id], held.slots[run_id] = doc, changes.slots[run_id]
        for record_id, doc in changes.records.items():
            # It changes again when that run ends.
            if doc.get("run_id") in held.runs and changes.slots[record_id] > recent:
                held.records[record_id], held.slots[record_id] = doc, changes.slots[record_id]
        held.born = (held.runs.keys() | held.records.keys()) & changes.born
        runs = {run_id: doc for run_id, doc in changes.runs.items() if run_id not in held.runs}
        records = {rid: doc for rid, doc in changes.records.items() if rid not in held.records}
        # The journal's pages first, a page a turn of the loop: a round's entries compressed at
        # once held the loop 20-35 ms (launches at 700/s, ninth session).
        journal: list[Doc] = []
        for page in journal_pages(list(changes.journal.values())):
            journal.append(page)
            await asyncio.sleep(0)
        writes: list[Coroutine[Any, Any, None]] = []
        if records or changes.removed:
            writes.append(
                self._pages.write(list(records.values()), sorted(changes.removed), term, changes.upto)
            )
        kinds = ((db.runs, runs), (db.keys, changes.keys))
        for collection, docs in kinds:
            new, old = partition(docs.values(), lambda doc: doc["_id"] in changes.born)
            if collection.name == "keys":  # a key's document never changes: each is new but for a retry
                new, old = new + old, []
            if new:
                writes.append(writer.insert_else_upsert(collection, new, term))
            if old:
                writes.append(writer.upsert(collection, old, term))
        if journal:
            writes.append(writer.insert_new(db.journal, journal))
        await self._fenced(term, writes)
        # The log from the oldest held-back version on stays: it is all that holds those runs and records.
        applied = min([changes.upto, *(slot - 1 for slot in held.slots.values())])
        await self._fenced(term, [self._raise_applied(applied)])
        await self._log.prune(applied)
        return held

    async def _raise_applied(self, slot: int) -> None:
        await self._db.records.update_one({"_id": HEAD_ID}, {"$max": {"applied": slot}}, upsert=True)

    async def _write_periodically(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._every_s)
            self._kick.clear()
            try:
                await self.flush()
                while self._pages.due and self._term and await self._pages.compact(self._term):
                    pass  # each folds at most about COMPACT_AT versions
            except StaleTerm as error:
                log.info("writing behind stopped: %s", error)
            except Exception as error:
                log.warning("writing behind failed (tried again in %.1f s): %r", self._every_s, error)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop; write what is noted first if the server answers within ``timeout_s``."""
        await cancel_and_wait([self._task])
        self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout_s)
