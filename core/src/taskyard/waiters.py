"""Callers waiting for runs to finish (long-polls): told by the queues once a run's final state has
committed. Synchronous methods only, all called on the engine's event loop, so the registry has
a single owner and no locks."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterable

Key = tuple[uuid.UUID, uuid.UUID]


class RunWaiters:
    def __init__(self) -> None:
        self._waiting: defaultdict[Key, set[asyncio.Future[None]]] = defaultdict(set)

    def watch(self, tenant_id: uuid.UUID, run_ids: Iterable[uuid.UUID]
              ) -> dict[uuid.UUID, asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futures = {}
        for run_id in run_ids:
            future: asyncio.Future[None] = loop.create_future()
            self._waiting[(tenant_id, run_id)].add(future)
            futures[run_id] = future
        return futures

    def unwatch(self, tenant_id: uuid.UUID, futures: dict[uuid.UUID, asyncio.Future[None]]
                ) -> None:
        for run_id, future in futures.items():
            key = (tenant_id, run_id)
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiting[key]

    def finished(self, tenant_id: uuid.UUID, run_ids: Iterable[uuid.UUID]) -> None:
        for run_id in run_ids:
            for future in self._waiting.pop((tenant_id, run_id), ()):
                if not future.done():
                    future.set_result(None)

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())
