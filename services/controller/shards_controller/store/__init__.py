"""Stores behind one contract: ``open_store(uri)`` picks one from a URI."""

from __future__ import annotations

from shards_controller.store.base import (
    LOG_CHUNK_LINES,
    JournalEntry,
    Lease,
    LogChunk,
    LogMeta,
    LogWrite,
    StaleTerm,
    Store,
    WriteBatch,
)
from shards_controller.store.embedded import EmbeddedStore


def open_store(uri: str) -> Store:
    """A store for ``uri``: ``mongodb://…`` / ``mongodb+srv://…`` or a SQLite file path
    (``sqlite:///path``, a plain path, or ``:memory:``)."""
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        from shards_controller.store.mongo import MongoStore

        return MongoStore(uri)
    if uri.startswith("sqlite://"):
        uri = uri.removeprefix("sqlite://")
    return EmbeddedStore(uri)


__all__ = [
    "LOG_CHUNK_LINES",
    "EmbeddedStore",
    "JournalEntry",
    "Lease",
    "LogChunk",
    "LogMeta",
    "LogWrite",
    "StaleTerm",
    "Store",
    "WriteBatch",
    "open_store",
]
