"""What `/metrics` reports of the engine, gathered when it is scraped: each queue actor's
meters and state (asked of the actor, which owns them), the persister's, and the counters the
engine keeps of its plugins. Nothing is computed between scrapes but the counting itself."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from taskyard.domain.meters import QueueSample
from taskyard.services.cluster import Cluster, ClusterSample
from taskyard.services.directory import ActorDirectory
from taskyard.store.persister import Persister, PersisterSample
from taskyard.store.tenants import TenantRepository


@dataclass(frozen=True, slots=True)
class EngineSample:
    queues: list[tuple[str, QueueSample]]  # (tenant name, the queue's sample)
    persister: PersisterSample
    plugin_errors: dict[str, int]  # hook calls that raised, by plugin
    source_failures: dict[str, int]  # trigger sources restarted after raising, by source
    failed_deliveries: dict[str, int]  # alerts given up after their retries, by channel
    actor_restarts: int  # actors restarted after a failure, summed
    cluster: ClusterSample


class Metrics:
    def __init__(
        self,
        actors: ActorDirectory,
        persister: Persister,
        tenants: TenantRepository,
        counters: Callable[[], dict[str, Counter[str]]],
        cluster: Cluster,
    ) -> None:
        self.actors = actors
        self.persister = persister
        self.tenants = tenants
        self.counters = counters  # plugin_errors, source_failures, failed_deliveries
        self.cluster = cluster
        self._names: dict[uuid.UUID, str] = {}  # tenant names never change

    async def sample(self) -> EngineSample:
        queues = list(self.actors.queues.items())
        samples = await asyncio.gather(*(actor.ask(actor.sample) for _, actor in queues))
        names = await self._tenant_names({tenant_id for (tenant_id, _), _ in queues})
        counters = self.counters()
        actors = [*self.actors.queues.values(), *self.actors.tenants.values()]
        return EngineSample(
            queues=[
                (names.get(tenant_id, str(tenant_id)), sample)
                for ((tenant_id, _), _), sample in zip(queues, samples, strict=True)
            ],
            persister=self.persister.sample(),
            plugin_errors=dict(counters["plugin_errors"]),
            source_failures=dict(counters["source_failures"]),
            failed_deliveries=dict(counters["failed_deliveries"]),
            actor_restarts=sum(actor.restarts for actor in actors),
            cluster=self.cluster.sample(),
        )

    async def _tenant_names(self, tenant_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        missing = [tenant_id for tenant_id in tenant_ids if tenant_id not in self._names]
        if missing:
            self._names.update(await self.tenants.names(missing))
        return self._names
