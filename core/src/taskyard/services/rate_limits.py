"""Rate limits set through the API: written to Postgres, then to the tenant's limiter, which its
queue actors decide against; the runs waiting for a changed limit are decided again.
"""

from __future__ import annotations

import uuid

from taskyard.domain.rate_limits import Usage
from taskyard.errors import NotFound
from taskyard.services.directory import ActorDirectory
from taskyard.store.rate_limits import RateLimitRepository
from taskyard_sdk.models import RateDuration


class RateLimits:
    def __init__(self, actors: ActorDirectory, repository: RateLimitRepository) -> None:
        self.actors = actors
        self.repository = repository

    async def put(self, tenant_id: uuid.UUID, key: str, limit: int, duration: RateDuration) -> None:
        """Set a limit (durable when this returns); runs waiting for it are decided again."""
        limiter = self.actors.limiter_for(tenant_id)
        await limiter.ready()
        await self.repository.put(tenant_id, key, limit, duration)
        limiter.configure(key, limit, duration)
        self._changed(tenant_id, key)

    async def delete(self, tenant_id: uuid.UUID, key: str) -> None:
        limiter = self.actors.limiter_for(tenant_id)
        await limiter.ready()
        if not await self.repository.delete(tenant_id, key):
            raise NotFound(f"no rate limit {key!r} in this tenant")
        limiter.remove(key)
        self._changed(tenant_id, key)

    async def usage(self, tenant_id: uuid.UUID) -> list[Usage]:
        limiter = self.actors.limiter_for(tenant_id)
        await limiter.ready()
        return limiter.usage()

    def _changed(self, tenant_id: uuid.UUID, key: str) -> None:
        for actor in self.actors.queues_of(tenant_id):
            actor.tell(actor.rate_limit_changed, key)
