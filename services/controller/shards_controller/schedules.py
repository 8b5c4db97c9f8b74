"""Schedules: the leader launches a process at each fire time of its cron, once, across failovers.

Each record with a schedule keeps, persisted, the newest fire time handled
(``schedule_last_fire_at``), what came of it and counts of fires, skips and
misses. Every tick the leader takes the fire times due since then:

- the newest, if within ``schedule_catch_up_s`` of now, launches a run under
  the idempotency key ``schedule:<scope>/<process>@<fire time>``, its record
  (the fire time handled) in the same write as the run: a new leader that
  finds the fire handled does nothing, and one that fires it again is
  answered with the same run;
- due fires older than the window are recorded as missed (no controller led
  then); the others before the newest are caught up by its one run (skips);
- a fire that finds the process active is skipped, and the skip recorded.

A paused schedule (persisted) fires nothing; resuming does not catch up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta

from shards import cron
from shards.errors import FailedPrecondition, ShardsError
from shards.models import ProcessRecord, ScheduleInfo
from shards_controller.launch import Launcher, LaunchRequest
from shards_controller.state import State, now

log = logging.getLogger(__name__)


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


def schedule_info(record: ProcessRecord, moment: datetime) -> ScheduleInfo:
    next_at = None
    if not record.schedule_paused:
        next_at = cron.next_fire(record.schedule, record.schedule_timezone, moment)
    return ScheduleInfo(
        scope_id=record.scope_id,
        process_id=record.process_id,
        schedule=record.schedule,
        timezone=record.schedule_timezone or "UTC",
        paused=record.schedule_paused,
        next_fire_at=next_at,
        last_fire_at=record.schedule_last_fire_at,
        last_outcome=record.schedule_last_outcome,
        fires=record.schedule_fires,
        skips=record.schedule_skips,
        missed=record.schedule_missed,
    )


class Schedules:
    def __init__(self, state: State, launcher: Launcher) -> None:
        self._state = state
        self._launcher = launcher
        # Schedules that never fired: fire times count from when this leader first saw them.
        self._first_seen: dict[tuple[str, str], datetime] = {}

    # ------------------------------------------------------------ the leader's loop

    async def loop(self) -> None:
        """Run while leading (cancelled at step-down)."""
        self._first_seen = {}
        tick = self._state.config.schedule_tick_s
        while True:
            try:
                await self.tick()
            except ShardsError as error:
                log.warning("schedules: %s", error)
            await asyncio.sleep(tick)

    async def tick(self) -> None:
        state = self._state
        moment = now()
        for key in list(state.scheduled):
            record = state.record(*key)
            if record is None or not record.schedule or record.schedule_paused:
                continue
            after = record.schedule_last_fire_at or self._first_seen.setdefault(key, moment)
            fires = cron.due_fires(record.schedule, record.schedule_timezone, after, moment)
            if fires:
                await self._fire(record, fires, moment)

    async def _fire(self, record: ProcessRecord, fires: list[datetime], moment: datetime) -> None:
        state = self._state
        window = timedelta(seconds=state.config.schedule_catch_up_s)
        newest = fires[-1]
        missed = sum(1 for fire in fires if moment - fire > window)
        caught_up = len(fires) - missed - 1  # earlier fires in the window: the newest's run covers them
        if moment - newest > window:
            outcome = f"missed {missed} fire time(s), the last at {_clock(newest)} (no controller led then)"
            await self._record(record, newest, outcome, skips=0, missed=missed)
            return
        current = state.record(*record.key) or record
        if current.state.is_active:
            outcome = f"skipped the fire at {_clock(newest)}: still {current.state} (run {current.run_id})"
            await self._record(current, newest, outcome, skips=caught_up + 1, missed=missed)
            return
        key = f"schedule:{record.scope_id}/{record.process_id}@{newest.isoformat()}"
        try:
            launched = await self._launcher.launch(
                LaunchRequest(
                    record.scope_id,
                    record.process_id,
                    idempotency_key=key,
                    fire_at=newest,
                    fire_skips=max(caught_up, 0),
                    fire_missed=missed,
                )
            )
        except FailedPrecondition as refused:  # became active meanwhile
            latest = state.record(*record.key) or record
            await self._record(latest, newest, f"skipped the fire at {_clock(newest)}: {refused}", 1, missed)
            return
        if launched.deduplicated:  # fired by a predecessor whose record write was lost: mark it handled
            latest = state.record(*record.key) or record
            if latest.schedule_last_fire_at != newest:
                await self._record(latest, newest, f"launched run {launched.run_id}", 0, 0, fired=1)

    async def _record(
        self, record: ProcessRecord, fire: datetime, outcome: str, skips: int, missed: int, fired: int = 0
    ) -> None:
        state = self._state
        latest = state.record(*record.key) or record
        updated = replace(
            latest,
            schedule_last_fire_at=fire,
            schedule_last_outcome=outcome,
            schedule_fires=latest.schedule_fires + fired,
            schedule_skips=latest.schedule_skips + skips,
            schedule_missed=latest.schedule_missed + missed,
        )
        await state.commit(state.stage(updated))

    # ------------------------------------------------------------ requests

    def list_schedules(self, scope_id: str) -> list[ScheduleInfo]:
        state = self._state
        state.require_leader()
        moment = now()
        records = state.committed.get(scope_id, {}).values()
        return sorted(
            (schedule_info(r, moment) for r in records if r.schedule), key=lambda info: info.process_id
        )

    async def set_paused(self, scope_id: str, process_id: str, paused: bool) -> ScheduleInfo:
        state = self._state
        state.require_leader()
        record = state.require_record(scope_id, process_id)
        if not record.schedule:
            raise FailedPrecondition(f"process {process_id!r} in scope {scope_id!r} has no schedule")
        moment = now()
        if record.schedule_paused != paused:
            verb = "paused" if paused else "resumed"
            updated = replace(
                record,
                schedule_paused=paused,
                schedule_last_outcome=f"{verb} at {_clock(moment)}",
                # Resuming starts from now: the fire times it was paused for are not caught up.
                schedule_last_fire_at=record.schedule_last_fire_at if paused else moment,
            )
            change = state.stage(updated)
            await state.commit(change)
            record = updated
        return schedule_info(record, moment)
