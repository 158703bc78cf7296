"""The tasks and workflows pages: what workers registered and what workflows were stored, a
workflow version's DAG, and the forms that trigger a run (checked against the input's JSON Schema
when the SDK sent one)."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
from aiohttp import web
from multidict import MultiMapping
from pydantic import ValidationError

from taskyard.domain.auth import Principal
from taskyard.errors import NotFound, Unprocessable
from taskyard.http.dashboard.page import ROOT, page, parse_metadata, render
from taskyard.http.keys import ENGINE
from taskyard.services.views import TaskInfo
from taskyard.store.workflows import StoredWorkflow
from taskyard_sdk.models import (
    PauseKind,
    RunSummary,
    TriggerRequest,
    WorkflowDefinition,
    WorkflowTriggerRequest,
)


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/tasks", page(_definitions))
    routes.add_get(f"{ROOT}/tasks/{{name}}", page(_task))
    routes.add_post(f"{ROOT}/tasks/{{name}}/trigger", page(_trigger_task, changes=True))
    routes.add_get(f"{ROOT}/workflows/{{name}}", page(_workflow))
    routes.add_post(f"{ROOT}/workflows/{{name}}/trigger", page(_trigger_workflow, changes=True))


def dag(definition: WorkflowDefinition, runs: dict[str, RunSummary]) -> dict[str, Any]:
    """Nodes (each step with its run's state and page, if it has a run) and edges (parent to
    child) for the page's graph."""
    steps = [*definition.steps, *([definition.on_failure] if definition.on_failure else [])]
    nodes = []
    for step in steps:
        run = runs.get(step.name)
        nodes.append(
            {
                "id": step.name,
                "status": run.status.value if run else "not started",
                "href": f"{ROOT}/runs/{run.run_id}" if run else None,
            }
        )
    edges = [
        {"source": parent, "target": step.name}
        for step in definition.steps
        for parent in step.parents
    ]
    return {"nodes": nodes, "edges": edges}


async def _definitions(request: web.Request, principal: Principal) -> web.StreamResponse:
    services = request.app[ENGINE].services
    tasks = await services.workers.tasks(principal.tenant_id)
    workflows = await services.history.latest_workflows(principal.tenant_id)
    paused = await services.pausing.paused(principal.tenant_id)
    return render(
        request,
        "definitions.html",
        tasks=tasks,
        workflows=workflows,
        paused_workflows={p.name for p in paused if p.kind is PauseKind.WORKFLOW},
    )


async def _task(request: web.Request, principal: Principal) -> web.StreamResponse:
    task = await _task_info(request, principal)
    return render(request, "task.html", task=task, form=None, problem=None)


async def _task_info(request: web.Request, principal: Principal) -> TaskInfo:
    name = request.match_info["name"]
    tasks = await request.app[ENGINE].services.workers.tasks(principal.tenant_id)
    found = next((task for task in tasks if task.name == name), None)
    if found is None:
        raise NotFound(f"no task {name!r} is registered in this tenant")
    return found


async def _trigger_task(request: web.Request, principal: Principal) -> web.StreamResponse:
    task = await _task_info(request, principal)
    form = await request.post()
    try:
        value, metadata = _trigger_form(form, task.input_schema)
        [ref] = await request.app[ENGINE].services.runs.trigger(
            principal.tenant_id, [TriggerRequest(task=task.name, input=value, metadata=metadata)]
        )
    except (Unprocessable, ValidationError) as exc:
        problem = _form_problem(exc)
        return render(request, "task.html", status=422, task=task, form=form, problem=problem)
    raise web.HTTPSeeOther(f"{ROOT}/runs/{ref.run_id}")


async def _workflow(request: web.Request, principal: Principal) -> web.StreamResponse:
    stored, latest = await _stored_workflow(request, principal)
    return _workflow_page(request, stored, latest)


def _workflow_page(
    request: web.Request,
    stored: StoredWorkflow,
    latest: int,
    *,
    form: MultiMapping[Any] | None = None,
    problem: str | None = None,
) -> web.Response:
    """A workflow version's page; with the form sent and what was wrong with it, a 422."""
    return render(
        request,
        "workflow.html",
        status=200 if problem is None else 422,
        workflow=stored,
        latest=latest,
        graph=dag(stored.definition, {}),
        form=form,
        problem=problem,
    )


async def _stored_workflow(
    request: web.Request, principal: Principal
) -> tuple[StoredWorkflow, int]:
    """The version asked for (the latest by default), and the latest version's number."""
    history = request.app[ENGINE].services.history
    name = request.match_info["name"]
    latest = await history.workflow(principal.tenant_id, name, None)
    asked = request.query.get("version")
    if not asked:
        return latest, latest.version
    if not asked.isdigit():
        raise Unprocessable(f"version {asked!r} is not a number")
    return await history.workflow(principal.tenant_id, name, int(asked)), latest.version


async def _trigger_workflow(request: web.Request, principal: Principal) -> web.StreamResponse:
    stored, latest = await _stored_workflow(request, principal)
    form = await request.post()
    try:
        value, metadata = _trigger_form(form, None)
        [ref] = await request.app[ENGINE].services.workflows.trigger(
            principal.tenant_id,
            stored.name,
            [WorkflowTriggerRequest(input=value, metadata=metadata)],
        )
    except (Unprocessable, ValidationError) as exc:
        return _workflow_page(request, stored, latest, form=form, problem=_form_problem(exc))
    raise web.HTTPSeeOther(f"{ROOT}/runs/{ref.run_id}")


def _form_problem(exc: Unprocessable | ValidationError) -> str:
    """What a trigger form is told was wrong: the engine's refusal, or the model's first."""
    return str(exc) if isinstance(exc, Unprocessable) else exc.errors()[0]["msg"]


def _trigger_form(
    form: MultiMapping[Any], schema: dict[str, Any] | None
) -> tuple[Any, dict[str, str]]:
    """A trigger form's input (JSON, checked against the schema when there is one) and its
    metadata (key=value, separated by commas)."""
    text = str(form.get("input", "")).strip() or "null"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"the input is not JSON: {exc}") from None
    if schema is not None:
        problem = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(value)
        )
        if problem is not None:
            where = "/".join(str(part) for part in problem.absolute_path) or "the input"
            raise Unprocessable(f"{where}: {problem.message}")
    return value, parse_metadata(str(form.get("metadata", "")))
