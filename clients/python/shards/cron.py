"""Cron schedules (``croniter``): checking an expression and its time zone, and its fire times.

Five fields (minute hour day month weekday), or six with seconds last
(``"* * * * * */5"``: every 5 s). Fire times are computed in the schedule's
time zone (an IANA name; default UTC) and handled as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shards.errors import InvalidArgument

MAX_CRON_LENGTH = 256


def check_schedule(expression: str, timezone: str, what: str = "schedule") -> None:
    """InvalidArgument unless ``expression`` is a cron expression croniter reads, in a known zone."""
    if len(expression) > MAX_CRON_LENGTH:
        raise InvalidArgument(f"{what} must be at most {MAX_CRON_LENGTH} characters")
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise InvalidArgument(
            f"{what} {expression!r} is not a cron expression (5 fields: minute hour day month weekday, "
            "or 6 with seconds last, e.g. '*/15 * * * *')"
        )
    zone(timezone, f"{what}_timezone")


def zone(name: str, what: str = "schedule_timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidArgument(f"{what} {name!r} is not a known time zone (e.g. 'Europe/Paris')") from error


def next_fire(expression: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after``, in UTC."""
    start = after.astimezone(zone(timezone))
    fire: datetime = croniter(expression, start).get_next(datetime)
    return fire.astimezone(UTC)


def due_fires(
    expression: str, timezone: str, after: datetime, until: datetime, limit: int = 10_000
) -> list[datetime]:
    """The fire times in (``after``, ``until``], oldest first (at most ``limit``, the newest kept)."""
    fires: list[datetime] = []
    moment = after
    while True:
        moment = next_fire(expression, timezone, moment)
        if moment > until:
            return fires
        fires.append(moment)
        if len(fires) > limit:
            del fires[0]
