"""The TenantActor: one per tenant. Owns the tenant's registry of task definitions (as workers
registered them), used to give runs triggered without options the options of their task."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from taskyard.actors import Actor
from taskyard_sdk.models import TaskOptions
from taskyard_sdk.protocol import TaskDefinition

if TYPE_CHECKING:
    from taskyard.persister import Persister
    from taskyard.repository import RunRepository


class TenantActor(Actor):
    def __init__(self, tenant_id: uuid.UUID, *, persister: Persister,
                 repository: RunRepository) -> None:
        super().__init__(f"tenant:{tenant_id}")
        self.tenant_id = tenant_id
        self.persister = persister
        self.repository = repository
        self.definitions: dict[str, TaskOptions] = {}

    async def on_start(self) -> None:
        self.definitions = await self.repository.load_definitions(self.tenant_id)

    def register(self, definitions: list[TaskDefinition]) -> None:
        changed = {}
        for definition in definitions:
            if self.definitions.get(definition.name) != definition.options:
                self.definitions[definition.name] = definition.options
                changed[(self.tenant_id, definition.name)] = definition.options.model_dump_json()
        if changed:
            self.persister.definitions(changed)

    def options_for(self, tasks: list[str]) -> dict[str, TaskOptions]:
        return {task: self.definitions[task] for task in tasks if task in self.definitions}
