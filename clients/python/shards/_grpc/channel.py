"""A channel to "the controller": whichever of several addresses leads now.

A standby controller answers UNAVAILABLE with the leader's address in the
``shards-leader`` trailing metadata; a dead one does not answer at all. ``call``
follows the hint, or tries the next address with a capped backoff, until its
deadline. Only retry calls that are safe to repeat (reads, and writes with an
idempotency key): the client gives every launch a key for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from shards._grpc.credentials import TlsConfig, check_token, make_channel
from shards._grpc.status import LEADER_METADATA_KEY

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a controller restart or a take-over.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.min_reconnect_backoff_ms", 100),
    # A new channel must not inherit the reconnect backoff of an earlier
    # channel's connection to a controller that has since restarted.
    ("grpc.use_local_subchannel_pool", 1),
]


# The longest pause between two tries while no address leads. A take-over
# completes within about 2 s of a leader's death, and a try costs a refused
# connection or a standby's immediate answer: with a longer cap (it was 1 s, the
# exponential backoff's usual one), a client slept past the new leader for up
# to a second, and the take-over took 2.8-4.5 s instead of under 3.
MAX_RETRY_PAUSE_S = 0.25


def leader_hint(error: grpc.aio.AioRpcError) -> str:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == LEADER_METADATA_KEY:
            return str(value)
    return ""


class ControllerChannel:
    """aio channels to the controller addresses, and the one that leads now."""

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        retry_deadline_s: float = 15.0,
        tls: TlsConfig | None = None,
        token: str = "",
    ) -> None:
        """``tls``: speak TLS to every address (None: plaintext); ``token``: sent as a bearer token."""
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        if not addresses:
            raise ValueError("at least one controller address is required")
        self._addresses = list(addresses)
        self._current = self._addresses[0]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.retry_deadline_s = retry_deadline_s
        if token:
            check_token(token)  # refuses a malformed token now rather than at the first call
        self._tls = tls
        self._token = token

    @property
    def address(self) -> str:
        return self._current

    def channel(self) -> grpc.aio.Channel:
        channel = self._channels.get(self._current)
        if channel is None:
            channel = make_channel(self._current, tls=self._tls, token=self._token, options=CHANNEL_OPTIONS)
            self._channels[self._current] = channel
        return channel

    def redirect(self, error: grpc.aio.AioRpcError) -> bool:
        """Move to the leader or the next address after UNAVAILABLE; True if moved by a hint."""
        hint = leader_hint(error)
        if hint and hint != self._current:
            if hint not in self._addresses:
                self._addresses.append(hint)
            self._current = hint
            return True
        index = self._addresses.index(self._current) if self._current in self._addresses else -1
        self._current = self._addresses[(index + 1) % len(self._addresses)]
        return False

    async def call(
        self,
        invoke: Callable[[grpc.aio.Channel], Awaitable[T]],
        deadline_s: float | None = None,
        *,
        timeouts_mean_down: bool = True,
    ) -> T:
        """Run ``invoke`` on the leader's channel, following redirects until the deadline.

        A call that times out is taken for a controller that hangs (paused,
        overloaded) and tried on the next address, unless ``timeouts_mean_down``
        is False (a call whose timeout is the point, such as waiting for a run).
        """
        deadline = time.monotonic() + (self.retry_deadline_s if deadline_s is None else deadline_s)
        retried = {grpc.StatusCode.UNAVAILABLE}
        if timeouts_mean_down and len(self._addresses) > 1:
            retried.add(grpc.StatusCode.DEADLINE_EXCEEDED)
        backoff = 0.05
        while True:
            try:
                return await invoke(self.channel())
            except grpc.aio.AioRpcError as error:
                if error.code() not in retried or time.monotonic() >= deadline:
                    raise
                if self.redirect(error):
                    continue
                await asyncio.sleep(
                    min(backoff, max(0.0, deadline - time.monotonic())) * random.uniform(0.8, 1.2)
                )
                backoff = min(backoff * 2, MAX_RETRY_PAUSE_S)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
