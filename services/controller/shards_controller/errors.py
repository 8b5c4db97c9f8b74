"""The controller's own errors: where a request that cannot be served here should go."""

from __future__ import annotations

from shards.errors import Unavailable


class NotLeader(Unavailable):
    """This controller is a standby; ``leader_address`` is where the leader answers."""

    def __init__(self, leader_address: str) -> None:
        where = f"; the leader is at {leader_address}" if leader_address else "; no leader is known yet"
        super().__init__(f"this controller is not the leader{where}")
        self.leader_address = leader_address


class WatchClosed(Unavailable):
    """The controller stopped leading while a watch was open; resume on the new leader."""
