"""Cron expressions and time zones: validation, the next tick, the ticks missed while the engine
was down. croniter does the calendar arithmetic (5 fields, or 6 with seconds last); ticks are
computed in the cron's time zone, so "0 9 * * *" in Europe/Paris is 09:00 local across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

MAX_CATCH_UP = 100  # catch_up=all fires at most this many missed ticks


class CronError(ValueError):
    """An expression or time zone that cannot be used."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def validate(expression: str, timezone: str) -> None:
    zone(timezone)
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise CronError(
            f"cron expression {expression!r} has {len(fields)} fields; it needs 5 "
            f"(minute hour day month weekday) or 6 (with seconds last)"
        )
    try:
        croniter(expression, datetime.now(UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise CronError(f"cron expression {expression!r} is not valid: {exc}") from None
    next_tick(expression, timezone, datetime.now(UTC).timestamp())  # one that never fires


def _ticks(expression: str, timezone: str, at: float) -> croniter:
    return croniter(expression, datetime.fromtimestamp(at, zone(timezone)))


def next_tick(expression: str, timezone: str, after: float) -> float:
    """The first tick strictly after `after` (epoch seconds). A wall-clock time that a DST
    change repeats fires once, at its first occurrence."""
    ticks = _ticks(expression, timezone, after)
    try:
        while True:
            tick = float(ticks.get_next(datetime).timestamp())
            if _first_occurrence(tick, timezone):
                return tick
    except CroniterBadDateError:
        raise CronError(f"cron expression {expression!r} never fires") from None


def _first_occurrence(tick: float, timezone: str) -> bool:
    """False for the second time a wall clock shows a time a DST change repeats (Python marks
    that instant fold=1; croniter's own flag is not reliable walking backwards)."""
    return datetime.fromtimestamp(tick, zone(timezone)).fold == 0


def ticks_between(
    expression: str, timezone: str, after: float, until: float, limit: int
) -> list[float]:
    """Ticks in (after, until], oldest first: at most the `limit` latest of them, found walking
    back from `until` (a long downtime costs `limit` steps, not one per missed tick)."""
    ticks = _ticks(expression, timezone, until + 0.001)
    found: list[float] = []
    try:
        while len(found) < limit:
            tick = float(ticks.get_prev(datetime).timestamp())
            if tick <= after:
                break
            if _first_occurrence(tick, timezone):
                found.append(tick)
    except CroniterBadDateError:
        pass
    return found[::-1]
