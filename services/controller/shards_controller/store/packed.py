"""Documents stored as one compressed binary: the commit log's entries, the records' pages and
chunks, the journal's pages.

One opaque field, because FerretDB converts every field of a document to and
from its own JSON, at a cost by the byte (``store.mongo_log``); zlib's fastest
level, because most of the ratio (13x on a busy commit's body) comes for a
fraction of the CPU.
"""

from __future__ import annotations

import zlib

import bson
from bson.codec_options import CodecOptions

from shards_controller.store.documents import Doc

COMPRESSION_LEVEL = 1
# Decoded as the driver decodes the collections (``tz_aware`` clients).
_CODEC: CodecOptions[Doc] = CodecOptions(tz_aware=True)


def pack(body: Doc) -> bson.Binary:
    return bson.Binary(zlib.compress(bson.encode(body), COMPRESSION_LEVEL))


def unpack(binary: bytes) -> Doc:
    return bson.decode(zlib.decompress(bytes(binary)), codec_options=_CODEC)


def unpack_uncompressed(binary: bytes) -> Doc:
    """A body an earlier version stored uncompressed."""
    return bson.decode(bytes(binary), codec_options=_CODEC)
