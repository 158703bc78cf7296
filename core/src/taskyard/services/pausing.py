"""Pausing and resuming a queue, a task, a workflow or a worker: stored first (so it outlives
a restart, and a queue actor started later reads it), then applied by every queue actor of the
tenant. Changes of one tenant are made one at a time, so the actors see them in order."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from taskyard.errors import NotFound
from taskyard.services.directory import ActorDirectory
from taskyard.store.pauses import Paused, PauseRepository
from taskyard_sdk.models import PauseKind, PauseView


class Pausing:
    def __init__(self, actors: ActorDirectory, repository: PauseRepository) -> None:
        self.actors = actors
        self.repository = repository
        self._changing: defaultdict[uuid.UUID, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def pause(
        self, tenant_id: uuid.UUID, kind: PauseKind, name: str, reason: str | None
    ) -> PauseView:
        """Nothing new of it is assigned from now on; what runs finishes. A worker must be
        connected (its id is random: another is a mistake); the rest may be paused ahead."""
        if kind is PauseKind.WORKER and not await self._connected(tenant_id, name):
            raise NotFound(f"no connected worker {name} in this tenant")
        async with self._changing[tenant_id]:
            paused = await self.repository.pause(tenant_id, kind, name, reason)
            await self._apply(tenant_id)
        return pause_view(paused)

    async def resume(self, tenant_id: uuid.UUID, kind: PauseKind, name: str) -> PauseView:
        """What waited for it may be assigned again (resuming what is not paused is a no-op)."""
        async with self._changing[tenant_id]:
            await self.repository.resume(tenant_id, kind, name)
            await self._apply(tenant_id)
        return PauseView(kind=kind, name=name, paused=False)

    async def paused(self, tenant_id: uuid.UUID) -> list[PauseView]:
        return [pause_view(paused) for paused in await self.repository.of_tenant(tenant_id)]

    async def _apply(self, tenant_id: uuid.UUID) -> None:
        pauses = await self.actors.pauses_of(tenant_id)
        for queue in self.actors.queues_of(tenant_id):
            queue.tell(queue.pauses_changed, pauses)

    async def _connected(self, tenant_id: uuid.UUID, worker_id: str) -> bool:
        registry = self.actors.registry
        workers = await registry.ask(registry.of_tenant, tenant_id)
        return any(str(worker["worker_id"]) == worker_id for worker in workers)


def pause_view(paused: Paused) -> PauseView:
    return PauseView(
        kind=paused.kind,
        name=paused.name,
        paused=True,
        reason=paused.reason,
        paused_at=paused.paused_at,
    )
