"""The MongoDB store's schema: the secondary indexes it creates, and what the server pushes down.

Every hot lookup is by ``_id`` (see ``store.mongo``); on MongoDB these indexes
serve the reads off the hot path: ``list_runs`` by process or scope, the
active runs a take-over loads, and the newest revision.

On FerretDB 1.24 none is created. It builds a secondary index as a btree on the
field's JSON but pushes a filter down as ``@>``, which a btree cannot serve:
PostgreSQL's plan for ``{scope_id}``, ``{scope_id, process_id}`` and ``{active:
true}`` is a sequential scan with or without them (its ``explain``). Such an
index would serve no read and cost every write of its collection, and an
update rewrites its document whole: every index of the collection takes a new
entry (``python -m bench.ferretdb_costs``). A store opened on FerretDB drops
the ones an earlier version created.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from shards_controller.store.documents import Doc
from shards_controller.store.mongo_commands import OPS_PER_COMMAND

NAMESPACE_EXISTS = 48

INDEXES: dict[str, list[IndexModel]] = {
    "records": [IndexModel([("revision", DESCENDING)], name="records_by_revision")],
    "runs": [
        IndexModel(
            [("scope_id", ASCENDING), ("process_id", ASCENDING), ("created_ts", DESCENDING)],
            name="runs_by_process",
        ),
        IndexModel([("scope_id", ASCENDING), ("created_ts", DESCENDING)], name="runs_by_scope"),
        # sparse, not partial: FerretDB 1.x has no partialFilterExpression.
        IndexModel([("active", ASCENDING)], name="runs_active", sparse=True),
    ],
    # Created up front too: their first inserts may come from rivals at once.
    "log": [],
    "record_pages": [],
    "record_chunks": [],
}


async def is_ferretdb(db: AsyncDatabase[Doc]) -> bool:
    return "ferretdbVersion" in await db.command("buildInfo")


async def create_indexes(db: AsyncDatabase[Doc], ferretdb: bool) -> None:
    """Create the indexes (idempotent); on FerretDB, drop them instead (see above)."""
    present = set(await db.list_collection_names())
    for name, indexes in INDEXES.items():
        if ferretdb:
            if name not in present:
                # Created now, as an index would have: ``pushes_down_id_and_term`` explains a
                # query on it, and an absent collection is not explained as the real one.
                try:
                    await db.create_collection(name, check_exists=False)
                except OperationFailure as error:
                    if error.code != NAMESPACE_EXISTS:  # another controller created it meanwhile
                        raise
            existing = {index["name"] async for index in await db[name].list_indexes()}
            for index in indexes:
                if index.document["name"] in existing:
                    await db[name].drop_index(index.document["name"])
            continue
        for index in indexes:
            await db[name].create_indexes([index])


@dataclass(frozen=True, slots=True)
class WriteLimits:
    """How many statements one ``update`` or ``delete`` command carries, and how many such
    commands of one batch are sent at once."""

    statements_per_command: int
    commands_at_once: int


# MongoDB: 1,000 statements a command, and a batch's commands (one a collection,
# mostly) at once: the bound is shared by every write of the store, so one of 1
# would send a group commit's collections in turn.
MONGODB_LIMITS = WriteLimits(OPS_PER_COMMAND, 16)
# FerretDB 1.24 keeps each statement's query open (one PostgreSQL connection
# from its pool of 50) until the whole command is done, and each needs one more
# connection to write: one command of 60 updates of existing documents waits for
# ever on its own pool, and every client with it (found under 64 launches in
# flight; ``tests/test_mongo_store.py`` has the 60). A command of 4 statements
# holds 5 connections at most; 4 of them at once, 20, and the rest of the data
# pool's 16 (finds, inserts: 2 at most each) and the lease's 2 stay under 50.
# Against one statement per command, 16 at once: 1.3x the upserts per second,
# a fifth less of FerretDB's and PostgreSQL's CPU, a third of ours
# (``python -m bench.ferretdb_writes``).
FERRETDB_LIMITS = WriteLimits(4, 4)


def write_limits(ferretdb: bool) -> WriteLimits:
    """The limits for this server: FerretDB's (see ``FERRETDB_LIMITS``) or MongoDB's."""
    return FERRETDB_LIMITS if ferretdb else MONGODB_LIMITS


async def pushes_down_id_and_term(db: AsyncDatabase[Doc]) -> bool:
    """Whether the server serves ``{_id, term: {$lte: n}}`` from the ``_id`` index.

    MongoDB does (its explain has no ``filterPushdown``); FerretDB says in its
    explain whether it pushes the filter down: the PostgreSQL backend does (its
    ``@>`` on ``_id`` then uses the GIN index), the SQLite backend does not.
    """
    explained = await db.command(
        "explain", {"find": "records", "filter": {"_id": "", "term": {"$lte": 0}}}, verbosity="queryPlanner"
    )
    return bool(explained.get("filterPushdown", True))


def lease_database(data: str, ferretdb: bool, term_in_filter: bool) -> str:
    """The database that holds the lease: the data's own, except on FerretDB's SQLite backend
    (the FerretDB that does not push ``{_id, term}`` down, above).

    That backend keeps each database in one SQLite file, written by one writer at a time, and
    a waiting writer is not served in turn: with the write-behind's updates (each one a scan
    there, 37 ms at 4,000 documents) in the same file, a renewal of the lease waited 87 ms at
    the median and 2.5 s at worst, past the lease's TTL, and the lone controller stepped down
    again and again. In a file of its own: 7 ms and 21 ms (``python -m bench.lease_sqlite``).
    """
    return f"{data}_lease" if ferretdb and not term_in_filter else data
