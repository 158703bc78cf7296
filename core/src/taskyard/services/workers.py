"""The workers connected now and the tasks they registered, as the worker registry and the
tenant actors know them.
"""

from __future__ import annotations

import asyncio
import uuid

from taskyard.services.directory import ActorDirectory
from taskyard.services.views import TaskInfo, WorkerInfo


class Workers:
    def __init__(self, actors: ActorDirectory) -> None:
        self.actors = actors

    async def disconnect(self) -> None:
        """Close every worker's connection (at shutdown: they would hold it open)."""
        await self.actors.registry.stop()

    async def connected(self, tenant_id: uuid.UUID) -> list[WorkerInfo]:
        """The tenant's workers connected now, with the slots their queues see busy."""
        registry = self.actors.registry
        described = await registry.ask(registry.of_tenant, tenant_id)
        queues = [
            self.actors.existing_queue(tenant_id, queue)
            for queue in {worker["queue"] for worker in described}
        ]
        used: dict[uuid.UUID, int] = {}
        for counts in await asyncio.gather(
            *(queue.ask(queue.slots_used) for queue in queues if queue is not None)
        ):
            used.update(counts)
        paused = (await self.actors.pauses_of(tenant_id)).workers
        workers = [WorkerInfo.model_validate(worker) for worker in described]
        for worker in workers:
            worker.slots_used = used.get(worker.worker_id, 0)
            worker.paused = worker.worker_id in paused
        return workers

    async def tasks(self, tenant_id: uuid.UUID) -> list[TaskInfo]:
        """Tasks registered by workers, with their options and the workers connected for them."""
        tenant = self.actors.tenant(tenant_id)
        definitions = await tenant.ask(tenant.all_definitions)
        schemas = await tenant.ask(tenant.input_schemas)
        registry = self.actors.registry
        workers = await registry.ask(registry.of_tenant, tenant_id)  # names and tasks suffice
        pauses = await self.actors.pauses_of(tenant_id)
        return [
            TaskInfo(
                name=name,
                options=options,
                workers=sorted(w["name"] for w in workers if name in w["tasks"]),
                input_schema=schemas.get(name),
                paused=pauses.of_task(name) is not None,
            )
            for name, options in sorted(definitions.items())
        ]
