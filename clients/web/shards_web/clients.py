"""One ``AsyncClient`` per token: each user's token goes through to the controller.

With auth off every browser shares the client made for the empty token. The
pool is bounded (least recently used first out); tokens are keyed by their
SHA-256, so no token appears in a key, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

from shards import AsyncClient
from shards_web.config import WebConfig

MAX_CLIENTS = 256


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


class ClientPool:
    def __init__(self, config: WebConfig, size: int = MAX_CLIENTS) -> None:
        self._config = config
        self._size = size
        self._clients: OrderedDict[str, AsyncClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, token: str) -> AsyncClient:
        key = token_key(token)
        client = self._clients.get(key)
        if client is None:
            client = AsyncClient(
                list(self._config.controller), token=token, tls=self._config.controller_tls, timeout_s=10.0
            )
            self._clients[key] = client
            if len(self._clients) > self._size:
                _, evicted = self._clients.popitem(last=False)
                task = asyncio.ensure_future(evicted.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        else:
            self._clients.move_to_end(key)
        return client

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
