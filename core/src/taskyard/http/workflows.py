"""Workflows: register a definition (each change is a new version), read them, trigger runs."""

from __future__ import annotations

from pydantic import BaseModel, Field

from taskyard.domain.auth import READERS, WRITERS
from taskyard.http.keys import ENGINE
from taskyard.http.routing import PG_INTEGER_MAX, Call, Router, WithStatus
from taskyard.http.runs import REPLAYED, tell_replays
from taskyard.store.workflows import StoredWorkflow
from taskyard_sdk.models import (
    NAME_PATTERN,
    BatchTriggerResponse,
    BatchWorkflowTriggerRequest,
    RunRef,
    WorkflowDefinition,
    WorkflowInfo,
    WorkflowList,
    WorkflowTriggerRequest,
)

router = Router(tags=("workflows",))
NAME = {"name": NAME_PATTERN}


class VersionQuery(BaseModel):
    version: int | None = Field(
        default=None, ge=1, le=PG_INTEGER_MAX, description="The latest when omitted."
    )


def _info(stored: StoredWorkflow) -> WorkflowInfo:
    return WorkflowInfo(
        name=stored.name,
        version=stored.version,
        created=stored.created,
        created_at=stored.created_at,
        definition=stored.definition,
    )


@router.post(
    "/api/v1/workflows",
    roles=WRITERS,
    body=WorkflowDefinition,
    response=WorkflowInfo,
    status=201,
    other_statuses={200: "This exact definition was registered before: its version."},
)
async def register_workflow(call: Call[WorkflowDefinition]) -> WithStatus | WorkflowInfo:
    """Register a workflow definition. A definition registered before returns its version
    (status 200); a changed one becomes the next version, used by runs triggered from now on
    (runs in flight keep theirs). 422 names the step or expression that is wrong: unknown
    parents, cycles, duplicate step names, CEL that does not compile."""
    engine = call.request.app[ENGINE]
    stored = await engine.services.workflows.register(call.principal.tenant_id, call.body)
    info = _info(stored)
    if not stored.created:
        return WithStatus(200, info)
    return info


@router.get("/api/v1/workflows", roles=READERS, response=WorkflowList)
async def list_workflows(call: Call[None]) -> WorkflowList:
    """The latest version of every registered workflow."""
    history = call.request.app[ENGINE].services.history
    latest = await history.latest_workflows(call.principal.tenant_id)
    return WorkflowList(workflows=[_info(stored) for stored in latest])


@router.get(
    "/api/v1/workflows/{name}",
    roles=READERS,
    query=VersionQuery,
    response=WorkflowInfo,
    params=NAME,
)
async def get_workflow(call: Call[None]) -> WorkflowInfo:
    """A workflow's definition: the latest version, or the one asked for."""
    history = call.request.app[ENGINE].services.history
    return _info(
        await history.workflow(call.principal.tenant_id, call.path["name"], call.query.version)
    )


@router.post(
    "/api/v1/workflows/{name}/runs",
    roles=WRITERS,
    body=WorkflowTriggerRequest,
    response=RunRef,
    status=201,
    params=NAME,
    other_statuses=REPLAYED,
)
async def trigger_workflow(call: Call[WorkflowTriggerRequest]) -> WithStatus | RunRef:
    """Start a run of the workflow's latest version. Its steps are runs too; the workflow
    run's output holds each step's output by name once it has finished. An idempotency key
    used before answers as with `POST /api/v1/runs`."""
    engine = call.request.app[ENGINE]
    [ref] = await tell_replays(
        call,
        [call.body.input],
        await engine.services.workflows.trigger(
            call.principal.tenant_id, call.path["name"], [call.body]
        ),
    )
    if not ref.created:
        return WithStatus(200, ref)
    return ref


@router.post(
    "/api/v1/workflows/{name}/runs/batch",
    roles=WRITERS,
    body=BatchWorkflowTriggerRequest,
    response=BatchTriggerResponse,
    status=201,
    params=NAME,
)
async def trigger_workflow_batch(call: Call[BatchWorkflowTriggerRequest]) -> BatchTriggerResponse:
    """Start many runs of a workflow in one request."""
    engine = call.request.app[ENGINE]
    refs = await engine.services.workflows.trigger(
        call.principal.tenant_id, call.path["name"], call.body.runs
    )
    return BatchTriggerResponse(
        runs=await tell_replays(call, [run.input for run in call.body.runs], refs)
    )


class WorkflowFile(BaseModel):
    file: str
    workflow: str | None = Field(description="The workflow its last good version defines.")
    error: str | None = Field(
        description="Why the file on disk does not load (file:line: "
        "reason); the last good version stays in use."
    )


class WorkflowFiles(BaseModel):
    files: list[WorkflowFile]


@router.get("/api/v1/workflow-files", roles=READERS, response=WorkflowFiles)
async def workflow_files(call: Call[None]) -> WorkflowFiles:
    """The tenant's declarative workflow files and whether each loads."""
    engine = call.request.app[ENGINE]
    status = engine.integrations.status(call.principal.tenant_name)
    return WorkflowFiles(files=[WorkflowFile.model_validate(entry) for entry in status])
