"""The MongoDB store's schema: the secondary indexes it creates, and what the server pushes down.

Every hot lookup is by ``_id`` (see ``store.mongo``); these indexes serve the
reads off the hot path: ``list_runs`` by process or scope, the active runs a
take-over loads, and the newest revision.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shards_controller.store.documents import Doc
from shards_controller.store.mongo_commands import OPS_PER_COMMAND

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
}


async def create_indexes(db: AsyncDatabase[Doc]) -> None:
    """Create the indexes (idempotent)."""
    for name, indexes in INDEXES.items():
        # One index per command: FerretDB 1.24 crashes the connection when one
        # createIndexes names two or more indexes that already exist.
        for index in indexes:
            await db[name].create_indexes([index])


@dataclass(frozen=True, slots=True)
class WriteLimits:
    """How many statements one ``update`` or ``delete`` command carries, and how many such
    commands of one batch are sent at once."""

    statements_per_command: int
    commands_at_once: int


# MongoDB: 1,000 statements a command, the commands of a batch in turn.
MONGODB_LIMITS = WriteLimits(OPS_PER_COMMAND, 1)
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


async def write_limits(db: AsyncDatabase[Doc]) -> WriteLimits:
    """The limits for this server: FerretDB's (see ``FERRETDB_LIMITS``) or MongoDB's."""
    info = await db.command("buildInfo")
    return FERRETDB_LIMITS if "ferretdbVersion" in info else MONGODB_LIMITS


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
