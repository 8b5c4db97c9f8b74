"""One browser's event stream: the feed's events written straight to its socket.

An event is encoded, and framed as a chunk of the chunked HTTP body, once for
every browser; each browser's part is one ``transport.write`` of those same
bytes, with no task, queue or drain of its own (a task per browser woken per
event, with aiohttp's write and drain, cost ~25 µs a browser: 25 ms an event at
a thousand browsers, all on one loop).

A browser whose socket buffer is full (a slow link, a sleeping laptop) is
skipped, not queued for: it is marked ``behind`` and, once its buffer has
drained, the feed sends it the newest state in one event (what changed since the
revision it was last brought to). So a slow browser costs at most its buffer,
however long it lags, and is never sent a state older than the newest.
"""

from __future__ import annotations

import asyncio

#: Bytes waiting in a browser's socket buffer above which it is skipped.
HIGH_WATER = 256 * 1024
#: ... and below which a browser behind is brought up to date.
LOW_WATER = 64 * 1024


def chunk(blob: bytes) -> bytes:
    """``blob`` as one chunk of a chunked HTTP/1.1 body (the response is chunked: no length)."""
    return b"%x\r\n%s\r\n" % (len(blob), blob) if blob else b""


class Subscriber:
    __slots__ = ("behind", "done", "revision", "transport")

    def __init__(self, transport: asyncio.WriteTransport, revision: int | None) -> None:
        self.transport = transport
        #: The revision this browser has been brought to (None: it has had no snapshot yet).
        self.revision = revision
        self.behind = False
        #: Done when the stream ends (the feed closed, the browser hung up).
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def closed(self) -> bool:
        return self.done.done()

    def send(self, frame: bytes, revision: int | None = None) -> None:
        """Write ``frame`` (a framed event) unless this browser is behind or its buffer is full."""
        if self.behind or self.done.done() or not frame:
            return
        transport = self.transport
        if transport.is_closing():
            self.finish()
        elif transport.get_write_buffer_size() > HIGH_WATER:
            self.behind = True  # the feed sends it the newest state once it has drained
        else:
            transport.write(frame)
            if revision is not None:
                self.revision = revision

    def drained(self) -> bool:
        """Behind, and its buffer low enough now to be sent the newest state."""
        return self.behind and self.transport.get_write_buffer_size() <= LOW_WATER

    def catch_up(self, frame: bytes, revision: int | None) -> None:
        """Write what brings this browser (behind) to ``revision``, and follow the events again."""
        self.behind = False
        self.send(frame, revision)

    def finish(self, frame: bytes = b"") -> None:
        """End the stream, with ``frame`` (a last event) when there is room for it."""
        if self.done.done():
            return
        if frame and not self.transport.is_closing():
            self.transport.write(frame)
        self.done.set_result(None)
