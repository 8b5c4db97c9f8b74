"""The lease loop: take or renew the leader lease, step up or down accordingly.

The lease is renewed every ttl/3. A leader that cannot renew before its lease
runs out steps down by itself (its writes would be fenced anyway). A standby
tries every ttl/4 and so takes over at most ~1.25 x ttl after the leader's
last renewal.

A leader renews in its own term (``renew_lease``), even when its event loop
was too busy to renew before the lease ran out: as long as nobody else took
the lease meanwhile, nobody led in between. Re-taking its own expired lease
gave it a new term instead, which fenced off its own writes in flight
(``StaleTerm('term 8 is stale: term 9 leads')``) and made it step down and take
over again, over and over under load (issue 10).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from shards._aio import cancel_and_wait
from shards_controller.controller import Controller
from shards_controller.store import Lease, Store

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, controller: Controller, store: Store) -> None:
        self._controller = controller
        self._store = store
        self._valid_until = 0.0
        # Taking over loads the whole state, which can outlast the lease: it
        # runs beside the loop, which goes on renewing meanwhile.
        self._loading: asyncio.Task[None] | None = None
        self._loading_term = 0  # the term ``_loading`` takes over for

    @property
    def _ttl_s(self) -> float:
        return self._controller.config.lease_ttl_s

    async def run(self) -> None:
        try:
            while True:
                await self._tick()
                await asyncio.sleep(self._ttl_s / (3 if self._controller.is_leader else 4))
        finally:
            await cancel_and_wait([self._loading])

    async def _tick(self) -> None:
        controller = self._controller
        config = controller.config
        asked_at = time.monotonic()
        lease: Lease | None
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
            # a cancellation that lands as the renewal completes, and the
            # controller's stop then waits forever for this loop to end.
            # A leader's renewal may take what is left of its lease: a slow store
            # (FerretDB on a busy machine) is not a lost lease, and its writes stay
            # fenced meanwhile. It steps down only once the lease has run out.
            # A standby's attempt may take a whole TTL: on a store that slow, a
            # third of one would never be enough, and nobody would lead at all.
            budget = self._ttl_s
            # The term it holds: leading, or loading the state to lead (a load of 100,000
            # records kept the loop too busy to renew in time; taking the lease afresh then
            # made a new term, and the load, done for the old one, was for nothing).
            held = controller.term if controller.is_leader else self._loading_term if self._loading else 0
            if held:
                budget = max(self._ttl_s / 3, self._valid_until - asked_at)
            async with asyncio.timeout(budget):
                ttl = timedelta(seconds=self._ttl_s)
                lease = None
                if held:
                    lease = await self._store.renew_lease(config.controller_id, config.address, ttl, held)
                if lease is None:
                    lease = await self._store.acquire_lease(config.controller_id, config.address, ttl)
        except Exception as error:  # the store is unreachable: keep leading while the lease lasts
            # A timeout's message is empty: say what it means.
            why = str(error) or f"no answer from the store within {budget:.2f} s"
            log.warning("lease renewal failed: %s", why)
            controller.metrics.store_errors.inc(("lease",))
            if controller.is_leader and time.monotonic() >= self._valid_until:
                await self._step_down("", f"its lease ran out while the store did not answer ({why})")
            return
        if lease is not None:
            self._valid_until = asked_at + self._ttl_s
            if self._loading is not None:
                if not self._loading.done():
                    return  # still loading; the lease was just renewed
                if not self._loading.cancelled() and self._loading.exception() is not None:
                    log.error("taking over failed: %s", self._loading.exception())
                self._loading = None
            if controller.is_leader and lease.term != controller.term:
                await self._step_down("", f"term {lease.term} replaced its term {controller.term}")
            if not controller.is_leader:
                self._loading = asyncio.create_task(controller.become_leader(lease.term), name="take-over")
                self._loading_term = lease.term
            return
        current = await self._store.read_lease()
        address = current.address if current is not None else ""
        if controller.is_leader:
            await self._step_down(address, f"another controller holds the lease ({address or 'unknown'})")
        controller.leader_address = address

    async def _step_down(self, leader_address: str, why: str) -> None:
        log.warning("stepped down from term %d: %s", self._controller.term, why)
        await self._controller.step_down(leader_address)

    async def release(self) -> None:
        """Give the lease up now, so a standby takes over without waiting for it to expire."""
        try:
            await self._store.release_lease(self._controller.config.controller_id)
        except Exception as error:
            log.warning("could not release the lease: %s", error)
