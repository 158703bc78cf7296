"""Rate limits: sliding windows that are never exceeded, and the tenant's set of them.

A window counts the units taken during the last `duration` seconds. It keeps them in
`SLOTS_PER_WINDOW` slots of `duration / SLOTS_PER_WINDOW` seconds and lets a slot go only once its
*end* is a whole `duration` ago, so units are counted for at least `duration` after they were
taken: in any span of `duration` seconds, at most `limit` units are ever taken (the price is a
little idle capacity, at most one slot's worth). Memory is bounded by the slot count, whatever
the limit.

A tenant's `RateLimiter` is shared by the tenant's queue actors (see actors/rate_limits.py, which
loads it): it is synchronous, each call runs to completion without awaiting, so a decision and the
units it takes are one step that no other actor can interleave.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from taskyard_sdk.models import RateDuration, RateLimit

SLOTS_PER_WINDOW = 60


@dataclass(eq=False)
class Window:
    limit: int
    duration: float
    slots: deque[list[float]] = field(default_factory=deque)  # [slot index, units], oldest first
    used: int = 0

    @property
    def width(self) -> float:
        return self.duration / SLOTS_PER_WINDOW

    def _expire(self, now: float) -> None:
        width, duration, slots = self.width, self.duration, self.slots
        while slots and (slots[0][0] + 1) * width + duration <= now:
            self.used -= int(slots.popleft()[1])

    def available(self, now: float) -> int:
        self._expire(now)
        return self.limit - self.used

    def take(self, units: int, now: float) -> None:
        index = math.floor(now / self.width)
        if self.slots and self.slots[-1][0] == index:
            self.slots[-1][1] += units
        else:
            self.slots.append([index, units])
        self.used += units

    def free_at(self, units: int, now: float) -> float:
        """When `units` will be available (`now` if they are; never if above the limit)."""
        self._expire(now)
        missing = self.used + units - self.limit
        if missing <= 0:
            return now
        for index, taken in self.slots:
            missing -= int(taken)
            if missing <= 0:
                return (index + 1) * self.width + self.duration
        return math.inf

    def state(self) -> list[list[float]]:
        return [list(slot) for slot in self.slots]


@dataclass(frozen=True, slots=True)
class Usage:
    """A bucket's limit and what is taken, as stored and as the API shows it."""

    key: str
    limit: int
    duration: RateDuration
    configured: bool  # set with rate_limits.put (else made by a dynamic key)
    slots: list[list[float]]


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.configured: dict[str, tuple[int, RateDuration]] = {}
        self.windows: dict[str, tuple[Window, RateDuration]] = {}
        self.dirty: set[str] = set()
        self._next_sweep = 0.0

    # -- configuration (the tenant's API calls, and the state loaded at start) --------------------

    def configure(self, key: str, limit: int, duration: RateDuration) -> None:
        self.configured[key] = (limit, duration)
        self._resize(key, limit, duration)
        self.dirty.add(key)

    def remove(self, key: str) -> None:
        self.configured.pop(key, None)
        self.windows.pop(key, None)
        self.dirty.discard(key)

    def restore(self, usage: Usage) -> None:
        if usage.configured:
            self.configured[usage.key] = (usage.limit, usage.duration)
        window = Window(usage.limit, usage.duration.seconds)
        for index, units in usage.slots:
            window.slots.append([index, units])
            window.used += int(units)
        self.windows[usage.key] = (window, usage.duration)

    def _resize(self, key: str, limit: int, duration: RateDuration) -> Window:
        current = self.windows.get(key)
        if current is not None and current[1] is duration:
            current[0].limit = limit
            return current[0]
        window = Window(limit, duration.seconds)  # a new duration starts a new window
        self.windows[key] = (window, duration)
        return window

    # -- decisions -------------------------------------------------------------------------------

    def refusal(self, bucket: str, units: int, spec: RateLimit) -> str | None:
        """Why a run asking for `units` of `bucket` can never start, or None."""
        limit = self._limit(bucket, spec)
        if limit is None:
            return (
                f"rate limit {bucket!r} is not defined in this tenant; set it with "
                f"ty.rate_limits.put({bucket!r}, limit=..., duration=...)"
            )
        if units > limit[0]:
            return (
                f"asks for {units} units of rate limit {bucket!r}, whose limit is "
                f"{limit[0]} per {limit[1].value}"
            )
        return None

    def _limit(self, bucket: str, spec: RateLimit) -> tuple[int, RateDuration] | None:
        if spec.key is not None:
            return self.configured.get(bucket)
        assert spec.limit is not None
        assert spec.duration is not None
        return spec.limit, spec.duration

    def _window(self, bucket: str, spec: RateLimit) -> Window | None:
        limit = self._limit(bucket, spec)
        if limit is None:
            return None
        current = self.windows.get(bucket)
        if current is not None and current[0].limit == limit[0] and current[1] is limit[1]:
            return current[0]
        return self._resize(bucket, *limit)

    def free_at(self, wants: list[tuple[str, int, RateLimit]], now: float) -> float:
        """When every bucket has the units asked of it (`now` when they all do)."""
        at = now
        for bucket, units, spec in wants:
            window = self._window(bucket, spec)
            if window is None:
                return math.inf
            at = max(at, window.free_at(units, now))
        return at

    def take(self, wants: list[tuple[str, int, RateLimit]], now: float) -> None:
        for bucket, units, spec in wants:
            window = self._window(bucket, spec)
            assert window is not None
            window.take(units, now)
            self.dirty.add(bucket)

    def available(self, bucket: str) -> int | None:
        current = self.windows.get(bucket)
        return current[0].available(self.clock()) if current is not None else None

    # -- persistence (write-behind, by the queue actors' batches) --------------------------------

    def take_dirty(self) -> list[Usage]:
        """The buckets changed since the last call, as rows to write. A dynamic bucket with
        nothing left in its window is forgotten (its row is written empty, which deletes it), so
        a million users' buckets do not stay in memory."""
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + 60
            for key, (window, _) in list(self.windows.items()):
                if key not in self.configured and window.available(now) == window.limit:
                    self.dirty.add(key)
        changed = []
        for key in self.dirty:
            current = self.windows.get(key)
            if current is None:
                continue
            window, duration = current
            window.available(now)  # drop what has expired before writing
            configured = key in self.configured
            if not configured and not window.slots:
                del self.windows[key]
            changed.append(Usage(key, window.limit, duration, configured, window.state()))
        self.dirty.clear()
        return changed

    def usage(self) -> list[Usage]:
        now = self.clock()
        rows = []
        for key, (window, duration) in sorted(self.windows.items()):
            window.available(now)
            rows.append(Usage(key, window.limit, duration, key in self.configured, window.state()))
        return rows
