"""Callers waiting for runs to finish (long-polls): told by the queues once a run's final state has
committed, and told what it is (so a long-poll that read the run before it ended need not read it
again). Synchronous methods only, all called on the engine's event loop, so the registry has a
single owner and no locks."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from taskyard.errors import TenantMoved
from taskyard_sdk.models import RunStatus

Key = tuple[uuid.UUID, uuid.UUID]


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A run's final state, as its owner committed it: the columns that change as a run goes."""

    run_id: uuid.UUID
    status: RunStatus
    attempt: int
    started_at: float | None
    finished_at: float
    output_json: bytes | None
    error_json: bytes | None


class RunWaiters:
    def __init__(self) -> None:
        self._waiting: defaultdict[Key, set[asyncio.Future[RunEnd]]] = defaultdict(set)

    def watch(
        self, tenant_id: uuid.UUID, run_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, asyncio.Future[RunEnd]]:
        loop = asyncio.get_running_loop()
        futures = {}
        for run_id in run_ids:
            future: asyncio.Future[RunEnd] = loop.create_future()
            self._waiting[(tenant_id, run_id)].add(future)
            futures[run_id] = future
        return futures

    def unwatch(
        self, tenant_id: uuid.UUID, futures: dict[uuid.UUID, asyncio.Future[RunEnd]]
    ) -> None:
        for run_id, future in futures.items():
            key = (tenant_id, run_id)
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiting[key]

    def finished(self, tenant_id: uuid.UUID, ends: Iterable[RunEnd]) -> None:
        for end in ends:
            for future in self._waiting.pop((tenant_id, end.run_id), ()):
                if not future.done():
                    future.set_result(end)

    def moved(self, tenant_id: uuid.UUID) -> None:
        """The tenant's runs end on another node now: who waits here learns so (and asks
        again, reaching the new owner)."""
        for key in [key for key in self._waiting if key[0] == tenant_id]:
            for future in self._waiting.pop(key):
                if not future.done():
                    future.set_exception(
                        TenantMoved("the tenant moved to another engine node; ask again")
                    )

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())
