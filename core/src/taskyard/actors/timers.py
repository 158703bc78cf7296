"""One heap of deadlines for the whole engine: retry back-off, schedule and execution timeouts.

`schedule(at, actor, handler, item)` delivers `item` to `actor` at wall-clock time `at` (seconds
since the epoch), batched: every item due at the same wake-up for the same actor and handler
arrives in one `handler(items)` message. Timers are never cancelled: the receiver checks, when one
fires, whether it still applies (a timeout for an attempt that already finished is ignored). That
keeps scheduling O(log n) and free of bookkeeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from taskyard.actors.base import Actor

Clock = Callable[[], float]
Entry = tuple[float, Actor, Callable[[list[Any]], Any], Any]


class Timers(Actor):
    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__("timers")
        self.clock = clock
        self._heap: list[tuple[float, int, Actor, Callable[[list[Any]], Any], Any]] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at: float | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(
        self, at: float, actor: Actor, handler: Callable[[list[Any]], Any], item: Any
    ) -> None:
        """Safe to call from any actor: it only enqueues a message to this one."""
        self.tell(self._add, [(at, actor, handler, item)])

    def schedule_many(self, entries: list[Entry]) -> None:
        """Several `(at, actor, handler, item)` in one message."""
        self.tell(self._add, entries)

    def _add(self, entries: list[Entry]) -> None:
        heap, seq = self._heap, self._seq
        earliest = None
        for at, actor, handler, item in entries:
            heapq.heappush(heap, (at, next(seq), actor, handler, item))
            if earliest is None or at < earliest:
                earliest = at
        if earliest is not None and (self._wakeup_at is None or earliest < self._wakeup_at):
            self._arm()

    def _arm(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
            self._wakeup_at = None
        if not self._heap:
            return
        at = self._heap[0][0]
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - self.clock())
        self._wakeup_at = at
        self._wakeup = loop.call_later(delay, self._due)

    def _due(self) -> None:
        self._wakeup = None
        self._wakeup_at = None
        if not self._stopped:
            self.tell(self._fire)

    def _fire(self) -> None:
        now = self.clock()
        batches: dict[tuple[Actor, Callable[[list[Any]], Any]], list[Any]] = defaultdict(list)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, actor, handler, item = heapq.heappop(heap)
            batches[(actor, handler)].append(item)
        for (actor, handler), items in batches.items():
            if actor.running:
                actor.tell(handler, items)
        self._arm()

    async def on_stop(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._heap.clear()
