"""A queue's activity over the last hour, by the minute: attempts started, runs that succeeded
and runs that ended otherwise, and how long the started ones had waited in the queue. The waits
go into log-spaced buckets (each about 9% wider than the one before), so keeping them costs a
logarithm and a dict update per start, and any percentile of the hour is read from at most
sixty small histograms, within 4.5% of the exact value.

Held in memory by the queue's actor, which records into it: it starts empty when the engine (or
the actor) starts, and says since when it counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

MINUTES = 60
_GROWTH = 2**0.125  # a bucket's upper bound over its lower one
_SMALLEST = 1e-4  # seconds: waits below a tenth of a millisecond share the first bucket


@dataclass(slots=True)
class Minute:
    minute: int  # whole minutes since the epoch
    started: int = 0
    succeeded: int = 0
    failed: int = 0  # ended otherwise: failed, timed out, cancelled
    waits: Counter[int] = field(default_factory=Counter)  # bucket -> started attempts

    @property
    def at(self) -> float:
        """The minute's start, in seconds since the epoch."""
        return self.minute * 60.0


@dataclass(frozen=True, slots=True)
class Waits:
    """Percentiles of the queue wait of the attempts started in the window, in seconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


class QueueActivity:
    def __init__(self, since: float) -> None:
        self.since = since  # when counting began
        self._minutes: list[Minute | None] = [None] * MINUTES

    def started(self, now: float, waited: float) -> None:
        minute = self._minute(now)
        minute.started += 1
        minute.waits[_bucket(waited)] += 1

    def finished(self, now: float, succeeded: bool) -> None:
        minute = self._minute(now)
        if succeeded:
            minute.succeeded += 1
        else:
            minute.failed += 1

    def last_hour(self, now: float) -> list[Minute]:
        """The last MINUTES minutes, oldest first, the current one last (empty ones included)."""
        current = int(now // 60)
        minutes = []
        for number in range(current - MINUTES + 1, current + 1):
            kept = self._minutes[number % MINUTES]
            minutes.append(kept if kept is not None and kept.minute == number else Minute(number))
        return minutes

    def waits(self, now: float) -> Waits | None:
        """The queue wait of the last hour's started attempts; None when none started."""
        merged: Counter[int] = Counter()
        for minute in self.last_hour(now):
            merged.update(minute.waits)
        count = sum(merged.values())
        if not count:
            return None
        ordered = sorted(merged.items())

        def percentile(fraction: float) -> float:
            rank = max(1, math.ceil(fraction * count))
            seen = 0
            for bucket, started in ordered:
                seen += started
                if seen >= rank:
                    return _middle(bucket)
            raise AssertionError("rank beyond the count")

        return Waits(count, percentile(0.5), percentile(0.9), percentile(0.99), _top(ordered))

    def _minute(self, now: float) -> Minute:
        number = int(now // 60)
        kept = self._minutes[number % MINUTES]
        if kept is None or kept.minute != number:
            kept = self._minutes[number % MINUTES] = Minute(number)
        return kept


def _bucket(waited: float) -> int:
    return math.floor(math.log(max(waited, _SMALLEST) / _SMALLEST, _GROWTH))


def _middle(bucket: int) -> float:
    """A bucket's geometric middle: within half a bucket (4.5%) of every wait in it."""
    return float(_SMALLEST * _GROWTH ** (bucket + 0.5))


def _top(ordered: list[tuple[int, int]]) -> float:
    """The longest wait's bucket's upper bound."""
    return float(_SMALLEST * _GROWTH ** (ordered[-1][0] + 1))
