"""Per-principal limits: requests in flight and open watches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from shards.errors import ResourceExhausted


class Limits:
    """Per-principal limits: requests in flight and open watches (0: no limit)."""

    def __init__(self, max_in_flight: int = 0, max_watchers: int = 0) -> None:
        self.max_in_flight = max_in_flight
        self.max_watchers = max_watchers
        self._in_flight: dict[str, int] = {}
        self._watchers: dict[str, int] = {}

    @staticmethod
    @contextlib.contextmanager
    def _slot(counts: dict[str, int], key: str, limit: int, what: str) -> Iterator[None]:
        held = counts.get(key, 0)
        if limit and held >= limit:
            who = key.split(":", 1)[-1]
            raise ResourceExhausted(f"{who} has {held} {what} open, the limit is {limit}; retry later")
        counts[key] = held + 1
        try:
            yield
        finally:
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]

    def in_flight(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self._slot(self._in_flight, key, self.max_in_flight, "requests")

    def watcher(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self._slot(self._watchers, key, self.max_watchers, "watches")

    def counts(self, key: str) -> tuple[int, int]:
        return self._in_flight.get(key, 0), self._watchers.get(key, 0)
