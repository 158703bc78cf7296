"""The tenant's queues as their actors see them now, with their last hour."""

from __future__ import annotations

import asyncio
import uuid

from taskyard.services.directory import ActorDirectory
from taskyard.services.views import QueueInfo

BUSIEST_KEYS = 10


class Queues:
    def __init__(self, actors: ActorDirectory) -> None:
        self.actors = actors

    async def overview(self, tenant_id: uuid.UUID) -> list[QueueInfo]:
        """Every queue of the tenant this engine holds (one with runs or workers), by name."""
        actors = self.actors.queues_of(tenant_id)
        described = await asyncio.gather(
            *(actor.ask(actor.overview, BUSIEST_KEYS) for actor in actors)
        )
        return sorted(
            (QueueInfo.model_validate(queue) for queue in described), key=lambda q: q.queue
        )
