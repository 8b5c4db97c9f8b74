"""Timestamps from process code to the harness: one UDP datagram on loopback.

The code under test (a Shards process, a Celery task) calls ``send`` with a
tag and ``time.time_ns()``; the harness's ``Sink`` resolves the future it
registered for that tag. A datagram costs a few microseconds and never blocks
the sender, so it does not distort what is measured.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

_SOCKET: socket.socket | None = None


def send(address: tuple[str, int], *fields: object) -> None:
    """Send ``fields`` joined by ``|`` to the sink at ``address`` (thread-safe)."""
    global _SOCKET
    if _SOCKET is None:
        _SOCKET = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _SOCKET.sendto("|".join(str(f) for f in fields).encode(), address)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


class Sink(asyncio.DatagramProtocol):
    """Collects datagrams ``tag|field|...`` and hands them to whoever waits for the tag."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[list[str]]] = {}
        self._early: dict[str, list[str]] = {}
        self.listeners: list[Callable[[str, list[str], int], None]] = []
        self.address = ""
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> Sink:
        loop = asyncio.get_running_loop()
        transport, sink = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        _enlarge_receive_buffer(transport.get_extra_info("socket"))
        host, port = transport.get_extra_info("sockname")[:2]
        sink.address = f"{host}:{port}"
        sink._transport = transport
        return sink

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        received_ns = time.time_ns()
        tag, *fields = data.decode().split("|")
        for listener in self.listeners:
            listener(tag, fields, received_ns)
        waiter = self._waiting.pop(tag, None)
        if waiter is None:
            self._early[tag] = fields
        elif not waiter.done():
            waiter.set_result(fields)

    def expect(self, tag: str) -> asyncio.Future[list[str]]:
        """A future for the fields of the next datagram tagged ``tag``."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        early = self._early.pop(tag, None)
        if early is not None:
            future.set_result(early)
        else:
            self._waiting[tag] = future
        return future

    def forget(self, tag: str) -> None:
        self._waiting.pop(tag, None)
        self._early.pop(tag, None)


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    """Room for a burst of thousands of datagrams while the harness's loop is busy."""
    size = 64 * 1024 * 1024
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root only: above net.core.rmem_max
    except (PermissionError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
