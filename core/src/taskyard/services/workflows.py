"""Workflows: registered (validated, versioned, their crons synced) and triggered. A workflow
run's progression belongs to its tenant actor, which these ask.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from taskyard.domain.cron import CronError
from taskyard.domain.cron import validate as validate_cron
from taskyard.domain.dag import WorkflowRun
from taskyard.domain.expressions import ExpressionError
from taskyard.domain.flow import keys_for
from taskyard.domain.limits import Limit
from taskyard.domain.runs import EMPTY_METADATA, WORKFLOW_QUEUE, json_bytes
from taskyard.domain.workflows import CompiledWorkflow, compile_workflow, digest
from taskyard.errors import NotFound, Unprocessable
from taskyard.ids import new_run_id
from taskyard.services.directory import ActorDirectory
from taskyard.services.runs import Runs
from taskyard.services.schedules import Scheduling
from taskyard.store.persister import Persister
from taskyard.store.rows import new_run_row
from taskyard.store.workflows import StoredWorkflow, WorkflowRepository
from taskyard_sdk.models import (
    DEFAULT_PRIORITY,
    RunRef,
    RunStatus,
    WorkflowDefinition,
    WorkflowTriggerRequest,
)
from taskyard_sdk.protocol import WORKFLOW_NOT_REGISTERED


class WorkflowStart(NamedTuple):
    workflow: CompiledWorkflow
    input: Any
    metadata: dict[str, str]
    priority: int | None = None
    idempotency_key: str | None = None
    parent_run_id: uuid.UUID | None = None
    run_id: uuid.UUID | None = None  # when the caller chose it (an outbox's row)


class Workflows:
    def __init__(
        self,
        actors: ActorDirectory,
        persister: Persister,
        repository: WorkflowRepository,
        runs: Runs,
        scheduling: Scheduling,
        input_limit: Limit,
    ) -> None:
        self.input_limit = input_limit
        self.actors = actors
        self.persister = persister
        self.repository = repository
        self.runs = runs  # for the check of parents, shared with triggered tasks
        self.scheduling = scheduling  # crons declared in code follow the definition

    async def register(
        self, tenant_id: uuid.UUID, definition: WorkflowDefinition
    ) -> StoredWorkflow:
        """Validate (422 naming the problem) and store; a changed definition is a new version."""
        compile_workflow(definition, 0)
        for expression in definition.on_crons:
            try:
                validate_cron(expression, "UTC")
            except CronError as exc:
                raise Unprocessable(f"workflow {definition.name!r}: on_crons: {exc}") from None
        stored = await self.repository.register(tenant_id, definition, digest(definition))
        tenant = self.actors.tenant(tenant_id)
        tenant.tell(tenant.workflow_registered, compile_workflow(definition, stored.version))
        await self.scheduling.sync_code_crons(
            tenant_id, workflow=definition.name, expressions=definition.on_crons
        )
        return stored

    async def trigger(
        self,
        tenant_id: uuid.UUID,
        name: str,
        requests: list[WorkflowTriggerRequest],
        *,
        ids: Sequence[uuid.UUID] | None = None,
        from_outbox: bool = False,
    ) -> list[RunRef]:
        """Start runs of the latest version of a workflow; returns once they are committed.
        `ids` and `from_outbox` as for `Runs.trigger`."""
        await self.persister.capacity()
        tenant = self.actors.tenant(tenant_id)
        workflow: CompiledWorkflow | None = await tenant.ask(tenant.latest_workflow, name)
        if workflow is None:
            raise NotFound(
                f"no workflow {name!r} is registered in this tenant; workers register "
                f"their workflows when they start",
                code=WORKFLOW_NOT_REGISTERED,
            )
        levels = workflow.definition.concurrency
        for index, request in enumerate(requests):
            try:
                keys_for(levels, request.input, request.metadata)
            except ExpressionError as exc:
                where = f"runs[{index}] " if len(requests) > 1 else ""
                raise Unprocessable(f"{where}(workflow {name!r}): {exc}") from None
        await self.runs.check_parents(tenant_id, requests)
        started = [
            WorkflowStart(
                workflow,
                request.input,
                request.metadata,
                request.priority,
                request.idempotency_key,
                request.parent_run_id,
                None if ids is None else ids[index],
            )
            for index, request in enumerate(requests)
        ]
        return await self.start(tenant_id, started, from_outbox=from_outbox)

    async def start(
        self, tenant_id: uuid.UUID, started: list[WorkflowStart], *, from_outbox: bool = False
    ) -> list[RunRef]:
        """Start workflow runs (of a trigger, or of the events that route to them); returns
        once they are committed. A run whose caller-chosen id is taken was started before (see
        `Runs.trigger`) and is answered as it is."""
        chosen = [start.run_id for start in started if start.run_id is not None]
        if not chosen:
            return await self._start(tenant_id, started, from_outbox)
        known = await self.runs.repository.run_statuses(tenant_id, chosen)
        fresh = iter(
            await self._start(tenant_id, [s for s in started if s.run_id not in known], from_outbox)
        )
        return [
            RunRef(
                run_id=start.run_id,
                task=start.workflow.name,
                status=known[start.run_id],
                created=False,
            )
            if start.run_id in known
            else next(fresh)
            for start in started
        ]

    async def _start(
        self, tenant_id: uuid.UUID, started: list[WorkflowStart], from_outbox: bool
    ) -> list[RunRef]:
        now = time.time()
        runs, rows = [], []
        for workflow, input, metadata, priority, key, parent_run_id, run_id in started:
            input_json = json_bytes(input)
            if len(input_json) > self.input_limit.bytes:
                where = f"the input of workflow {workflow.name!r}"
                raise self.input_limit.refusal(where, len(input_json))
            # A workflow with concurrency keys waits, queued, until its tenant actor admits it.
            admitted = not workflow.definition.concurrency
            run = WorkflowRun(
                run_id or new_run_id(parent_run_id),
                workflow,
                input_json,
                metadata or EMPTY_METADATA,
                priority,
                now,
                admitted=admitted,
            )
            runs.append(run)
            status = RunStatus.RUNNING if admitted else RunStatus.QUEUED
            rows.append(
                new_run_row(
                    tenant_id=tenant_id,
                    run_id=run.run_id,
                    task=workflow.name,
                    queue=WORKFLOW_QUEUE,
                    status=status.value,
                    priority=priority or DEFAULT_PRIORITY,
                    options_json="{}",
                    input_json=input_json.decode(),
                    metadata_json=orjson.dumps(metadata).decode(),
                    created_at=now,
                    idempotency_key=key,
                    kind="workflow",
                    workflow_version=workflow.version,
                    parent_run_id=parent_run_id,
                )
            )
        inserted = (
            await self.persister.insert_triggered(rows, from_outbox=from_outbox) if rows else []
        )
        tenant = self.actors.tenant(tenant_id)
        tenant.tell(
            tenant.start_runs,
            [run for run, outcome in zip(runs, inserted, strict=True) if outcome.created],
        )
        return [
            RunRef(
                run_id=outcome.run_id,
                task=run.workflow.name,
                status=RunStatus(outcome.status),
                created=outcome.created,
            )
            for run, outcome in zip(runs, inserted, strict=True)
        ]
