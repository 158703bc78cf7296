"""Cron arithmetic: time zones across DST changes, expressions that never fire, and catch-up
that costs what it fires, not what it missed."""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from taskyard.domain.cron import CronError, next_tick, ticks_between, validate

PARIS = ZoneInfo("Europe/Paris")


def _local(tick: float) -> str:
    return datetime.fromtimestamp(tick, PARIS).isoformat()


def test_a_wall_clock_time_that_dst_repeats_fires_once() -> None:
    before = datetime(2025, 10, 25, 12, tzinfo=PARIS).timestamp()
    first = next_tick("30 2 * * *", "Europe/Paris", before)
    second = next_tick("30 2 * * *", "Europe/Paris", first)
    assert [_local(first), _local(second)] == [
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]
    assert ticks_between("30 2 * * *", "Europe/Paris", before, second, 10) == [first, second]


def test_local_times_hold_across_the_spring_change() -> None:
    before = datetime(2025, 3, 29, 12, tzinfo=PARIS).timestamp()
    nine = next_tick("0 9 * * *", "Europe/Paris", before)
    after = next_tick("0 9 * * *", "Europe/Paris", nine)
    assert [_local(nine), _local(after)] == [
        "2025-03-30T09:00:00+02:00",
        "2025-03-31T09:00:00+02:00",
    ]
    assert after - nine == 86_400


def test_expressions_that_never_fire_or_do_not_parse_are_refused() -> None:
    with pytest.raises(CronError, match="never fires"):
        validate("0 0 30 2 *", "UTC")
    with pytest.raises(CronError, match="is not valid"):
        validate("61 * * * *", "UTC")
    with pytest.raises(CronError, match="unknown time zone"):
        validate("0 9 * * *", "Europe/Atlantis")
    validate("*/10 * * * * *", "UTC")  # six fields: seconds last


def test_catching_up_walks_back_only_as_far_as_it_fires() -> None:
    now = time.time()
    year_ago = now - 365 * 86_400
    started = time.perf_counter()
    latest = ticks_between("* * * * * *", "UTC", year_ago, now, 1)
    some = ticks_between("* * * * * *", "UTC", year_ago, now, 100)
    assert time.perf_counter() - started < 1  # not one step per missed second
    assert len(latest) == 1
    assert now - 1 < latest[0] <= now
    assert len(some) == 100
    assert some[-1] == latest[0]
    assert [b - a for a, b in itertools.pairwise(some)] == [1.0] * 99
