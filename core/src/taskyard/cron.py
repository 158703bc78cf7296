"""Cron expressions and time zones: validation, the next tick, the ticks missed while the engine
was down. croniter does the calendar arithmetic (5 fields, or 6 with seconds last); ticks are
computed in the cron's time zone, so "0 9 * * *" in Europe/Paris is 09:00 local across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

MAX_CATCH_UP = 100  # catch_up=all fires at most this many missed ticks


class CronError(ValueError):
    """An expression or time zone that cannot be used."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}; use an IANA name such as 'UTC' or "
                        f"'Europe/Paris'") from None


def validate(expression: str, timezone: str) -> None:
    zone(timezone)
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise CronError(f"cron expression {expression!r} has {len(fields)} fields; it needs 5 "
                        f"(minute hour day month weekday) or 6 (with seconds last)")
    try:
        croniter(expression, datetime.now(UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise CronError(f"cron expression {expression!r} is not valid: {exc}") from None


def next_tick(expression: str, timezone: str, after: float) -> float:
    """The first tick strictly after `after` (epoch seconds)."""
    start = datetime.fromtimestamp(after, zone(timezone))
    return float(croniter(expression, start).get_next(float))


def ticks_between(expression: str, timezone: str, after: float, until: float,
                  limit: int) -> list[float]:
    """Ticks in (after, until], oldest first: at most the `limit` latest of them."""
    start = datetime.fromtimestamp(after, zone(timezone))
    iterator = croniter(expression, start)
    found: list[float] = []
    while True:
        tick = float(iterator.get_next(float))
        if tick > until:
            return found
        found.append(tick)
        if len(found) > limit:
            found.pop(0)
