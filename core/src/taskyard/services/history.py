"""What the API reads of what is committed: runs listed, a run's events and log lines, stored
events, registered workflows. Reads Postgres through the repositories; what belongs to another
tenant is not found."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from taskyard.errors import NotFound
from taskyard.store.events import EventRepository
from taskyard.store.repository import RunRepository
from taskyard.store.workflows import StoredWorkflow, WorkflowRepository
from taskyard_sdk.models import EventView, LogLine, RunEvent


class History:
    def __init__(
        self, runs: RunRepository, events: EventRepository, workflows: WorkflowRepository
    ) -> None:
        self.runs = runs
        self.events = events
        self.workflows = workflows

    async def list_runs(
        self,
        tenant_id: uuid.UUID,
        *,
        statuses: list[str],
        tasks: list[str],
        since: datetime | None,
        until: datetime | None,
        metadata: dict[str, str],
        before: uuid.UUID | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` is the last run id of the previous page."""
        return await self.runs.list_runs(
            tenant_id,
            statuses=statuses,
            tasks=tasks,
            since=since,
            until=until,
            metadata=metadata,
            before=before,
            limit=limit,
        )

    async def run_documents(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        return await self.runs.run_documents(tenant_id, run_ids)

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

    async def search_events(
        self,
        tenant_id: uuid.UUID,
        *,
        keys: list[str],
        prefix: str | None,
        metadata: dict[str, str],
        since: datetime | None,
        until: datetime | None,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` is the last event id of the previous page."""
        return await self.events.search(
            tenant_id,
            keys=keys,
            prefix=prefix,
            metadata=metadata,
            since=since,
            until=until,
            before=before,
            limit=limit,
        )

    async def event(self, tenant_id: uuid.UUID, event_id: uuid.UUID) -> EventView:
        row = await self.events.get(tenant_id, event_id)
        if row is None:
            raise NotFound(f"no event {event_id} in this tenant")
        return EventView.model_validate(row)

    async def latest_workflows(self, tenant_id: uuid.UUID) -> list[StoredWorkflow]:
        """The latest version of every registered workflow."""
        return await self.workflows.latest(tenant_id)

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
            raise NotFound(f"no run {run_id} in this tenant")
