"""The MongoDB store's lease and its fence (a part of ``MongoStore``; see ``store.mongo``)."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shards_controller.store.base import Lease, StaleTerm
from shards_controller.store.documents import Doc
from shards_controller.store.mongo_commands import all_answered

_LEASE_ID = "leader"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How much of the lease's TTL is not trusted: the controllers' clocks may differ by that much.
_CLOCK_MARGIN = 0.25


@dataclass(frozen=True, slots=True)
class _Held:
    """The lease this store took or renewed, and until when (monotonic) it trusts it."""

    term: int
    valid_until: float


class MongoLease:
    """Taking, renewing and releasing the lease; refusing the writes of a stale term."""

    _held: _Held | None = None
    _lease_db: AsyncDatabase[Doc] | None = None  # on the lease's own client (its pool)
    _fence_db: AsyncDatabase[Doc] | None = None  # the same database, on the data's client

    @property
    def lease_database(self) -> str:
        """The database that holds the lease (``mongo_schema.lease_database``)."""
        if self._lease_db is None:
            raise RuntimeError("store is not open")
        return self._lease_db.name

    @property
    def _lease(self) -> AsyncCollection[Doc]:
        if self._lease_db is None:
            raise RuntimeError("store is not open")
        return self._lease_db.lease

    @property
    def _fence_lease(self) -> AsyncCollection[Doc]:
        """The lease, read and fenced on the data's client, beside the writes it fences."""
        if self._fence_db is None:
            raise RuntimeError("store is not open")
        return self._fence_db.lease

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
        doc = await self._fence_lease.find_one({"_id": _LEASE_ID}, {"term": 1})
        if doc is not None and int(doc.get("term", 0)) > term:
            raise StaleTerm(f"term {term} is stale: term {doc['term']} leads")

    async def _fence(self, term: int) -> None:
        result = await self._fence_lease.update_one(
            {"_id": _LEASE_ID, "term": {"$lte": term}}, {"$inc": {"fenced_writes": 1}}
        )
        if result.matched_count == 0:
            await self._refuse_if_stale(term)  # no lease at all: nothing to be fenced by


def _lease_from_doc(doc: Doc) -> Lease:
    return Lease(
        holder_id=doc["holder_id"],
        address=doc["address"],
        term=int(doc["term"]),
        expires_at=doc["expires_at"],
    )
