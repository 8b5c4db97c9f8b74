"""The fan-out floor for ``bench.web``: ``python -m bench.web_floor HZ``.

A bare server on the same event loop as ``shards web`` (uvloop) that does
nothing but what the GUI server cannot avoid: it answers each ``GET`` with the
same chunked event-stream headers, then ``HZ`` times a second writes one event
of the GUI's shape and size (a ``changes`` event with one record, its progress
message ``SEQ TIME_NS`` stamped just before the writes) to every socket, with
one ``transport.write`` of the same bytes each. No controller, no worker, no
JSON per browser, no HTTP framework: the staleness the same readers measure
against it is what fanning out to that many sockets costs on this machine.

Prints ``floor ready: PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import cast

import orjson

from shards._aio import run

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


class Browser(asyncio.Protocol):
    def __init__(self, browsers: set[asyncio.Transport]) -> None:
        self._browsers = browsers
        self._transport: asyncio.Transport | None = None
        self._request = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass of it

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport in self._browsers:
            return
        self._request += data
        if b"\r\n\r\n" in self._request:
            self._transport.write(HEAD + chunk(event(0, 0, "snapshot")))
            self._browsers.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._browsers.discard(self._transport)


def event(seq: int, stamp_ns: int, kind: str = "changes") -> bytes:
    """An event the size of the GUI's for ``hz200`` (the same record fields)."""
    record = {
        "process_id": "hz200",
        "name": "Progress at 200 Hz",
        "detail_level": 1,
        "state": "running",
        "progress": {"message": f"{seq} {stamp_ns}", "rate": 0.4213},
        "running_since": 1764598000123.456,
        "run_id": "r-6f1c2b9e0a4d4d0c9a3e",
        "worker_id": "w-3b7d5c1e2f",
        "revision": 100_000 + seq,
    }
    data = orjson.dumps({"revision": 100_000 + seq, "processes": [record], "removed": []})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (100_000 + seq, kind.encode(), data)


def chunk(blob: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(blob), blob)


async def main(hz: float) -> None:
    browsers: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Browser(browsers), "127.0.0.1", 0, backlog=1024)
    print(f"floor ready: {server.sockets[0].getsockname()[1]}", flush=True)
    interval, seq = 1.0 / hz, 0
    next_at = loop.time()
    while True:
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        seq += 1
        frame = chunk(event(seq, time.time_ns()))
        for transport in list(browsers):
            if not transport.is_closing():
                transport.write(frame)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run(main(float(sys.argv[1])))
