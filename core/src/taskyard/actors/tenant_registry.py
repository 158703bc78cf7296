"""A tenant's registries, owned by its TenantActor: task definitions as workers registered them,
every workflow version, and which workflows an event triggers."""

from __future__ import annotations

from typing import Any

from taskyard.domain.events import PushedEvent, matches
from taskyard.domain.runs import options_json
from taskyard.domain.workflows import CompiledWorkflow, key_matches
from taskyard_sdk.models import TaskOptions
from taskyard_sdk.protocol import TaskDefinition


class TenantRegistry:
    def __init__(self, definitions: dict[str, TaskOptions] | None = None) -> None:
        self.definitions: dict[str, TaskOptions] = definitions or {}
        # Input schemas as workers sent them since this engine started (not stored: a form
        # goes without one until a worker of the task connects).
        self.input_schemas: dict[str, dict[str, Any]] = {}
        self.versions: dict[tuple[str, int], CompiledWorkflow] = {}
        self.latest: dict[str, CompiledWorkflow] = {}

    def register(self, definitions: list[TaskDefinition]) -> dict[str, str]:
        """Take workers' task definitions; the options that changed, as their rows hold them."""
        changed = {}
        for definition in definitions:
            if definition.input_schema is not None:
                self.input_schemas[definition.name] = definition.input_schema
            if self.definitions.get(definition.name) != definition.options:
                self.definitions[definition.name] = definition.options
                changed[definition.name] = options_json(definition.options)
        return changed

    def add_version(self, workflow: CompiledWorkflow) -> None:
        self.versions[(workflow.name, workflow.version)] = workflow
        latest = self.latest.get(workflow.name)
        if latest is None or latest.version < workflow.version:
            self.latest[workflow.name] = workflow

    def route(self, events: list[PushedEvent]) -> list[list[CompiledWorkflow]]:
        """For each event, the workflows it triggers: `on_events` matches its key and the
        optional `event_filter` holds."""
        routed = []
        for event in events:
            triggered = []
            names = {"key": event.key}
            for workflow in self.latest.values():
                definition = workflow.definition
                pattern = next((p for p in definition.on_events if key_matches(p, event.key)), None)
                if pattern is None:
                    continue
                if definition.event_filter is not None and not matches(
                    event, pattern, definition.event_filter, names, f"workflow {workflow.name!r}"
                ):
                    continue
                triggered.append(workflow)
            routed.append(triggered)
        return routed
