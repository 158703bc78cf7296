"""What the API reads of what is committed: runs listed, a run's events and log lines, stored
events, registered workflows. Reads Postgres through the repositories; what belongs to another
tenant is not found."""

from __future__ import annotations

import uuid

from taskyard.errors import NotFound
from taskyard.services.runs import no_such_run
from taskyard.store.events import EventRepository
from taskyard.store.runs import RunRepository
from taskyard.store.workflows import StoredWorkflow, WorkflowRepository
from taskyard_sdk.models import DurableEntry, EventView, LogLine, RunEvent


class History:
    def __init__(
        self, runs: RunRepository, events: EventRepository, workflows: WorkflowRepository
    ) -> None:
        self.runs = runs
        self.events = events
        self.workflows = workflows
        # Reads with no rule to add to the repository's: its own methods serve.
        self.list_runs = runs.list_runs  # newest first, paged by the last run id
        self.status_counts = runs.status_counts  # of the newest runs a filter matches
        self.run_with_key = runs.run_with_key  # by idempotency key
        self.run_documents = runs.run_documents
        self.run_statuses = runs.run_statuses
        self.search_events = events.search  # newest first, paged by the last event id
        self.existing_events = events.existing
        self.latest_workflows = workflows.latest  # the latest version of each

    async def run_events(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[RunEvent]:
        await self._exists(tenant_id, run_id)
        return await self.runs.run_events(tenant_id, run_id)

    async def run_logs(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, *, limit: int, after: int | None
    ) -> list[tuple[int, LogLine]]:
        """The run's log lines after sequence number `after`, oldest first, with their
        sequence numbers."""
        await self._exists(tenant_id, run_id)
        return await self.runs.run_logs(tenant_id, run_id, limit=limit, after=after)

    async def durable_log(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[DurableEntry]:
        await self._exists(tenant_id, run_id)
        return await self.runs.durable_log(tenant_id, run_id)

    async def event(self, tenant_id: uuid.UUID, event_id: uuid.UUID) -> EventView:
        row = await self.events.get(tenant_id, event_id)
        if row is None:
            raise NotFound(f"no event {event_id} in this tenant")
        return EventView.model_validate(row)

    async def workflow(
        self, tenant_id: uuid.UUID, name: str, version: int | None
    ) -> StoredWorkflow:
        """A workflow's latest version, or the one asked for."""
        stored = await self.workflows.get(tenant_id, name, version)
        if stored is None:
            asked = f" version {version}" if version else ""
            raise NotFound(f"no workflow {name!r}{asked} in this tenant")
        return stored

    async def _exists(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
        if not await self.runs.run_exists(tenant_id, run_id):
            raise no_such_run(run_id)
