"""The dashboard: pages rendered on the server from the templates in `taskyard/dashboard`, made
live by htmx, which fetches a page's parts again when `/dashboard/live` (server-sent events)
says that the tenant's runs changed. Why this stack: docs/dashboard.md.

Signing in takes an API token, kept in an HttpOnly, SameSite=Strict cookie and checked on every
request exactly as a bearer token is (a revoked token is signed out at once). Forms that change
something carry a CSRF token derived from the session's token. A tenant's pages show that tenant
only: every read goes through the services with the session's tenant. A viewer token sees every
page and changes nothing (its pages have no buttons, and its forms are refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
import jsonschema
import orjson
from aiohttp import web
from multidict import MultiDict, MultiMapping
from pydantic import BaseModel, Field, ValidationError, field_validator

from taskyard.domain.auth import WRITERS, Principal, Role
from taskyard.errors import ApiError, Forbidden, NotFound, Unauthorized, Unprocessable
from taskyard.http.keys import ENGINE
from taskyard.http.rate_limits import rate_limit_view
from taskyard.http.routing import metadata_filter, page_cursor
from taskyard.services.views import TaskInfo
from taskyard.store.workflows import StoredWorkflow
from taskyard_sdk.models import (
    RunFilter,
    RunKind,
    RunStatus,
    RunSummary,
    RunView,
    TriggerRequest,
    WorkflowDefinition,
    WorkflowTriggerRequest,
)

ROOT = "/dashboard"
COOKIE = "taskyard_session"
NEW_TOKEN = "taskyard_new_token"  # a created token's secret, on its way to being shown once
PAGE_SIZE = 50
COUNTED = 10_000  # the newest runs a page counts per status (a bounded, index-backed walk)
LOG_LINES = 500
LIVE_EVERY = 0.5  # seconds: at most two refreshes a second, however busy the tenant is
KEEPALIVE = 15.0  # seconds between comments on an idle live stream (proxies close silent ones)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("dashboard_templates")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("dashboard_principal")
CSRF: web.RequestKey[str] = web.RequestKey("dashboard_csrf")

Handler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def install(app: web.Application) -> None:
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("taskyard", "dashboard/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["moment"] = _moment
    templates.filters["duration"] = _duration
    templates.filters["pretty_json"] = _pretty_json
    templates.filters["event_detail"] = _event_detail
    app[TEMPLATES] = templates
    static = resources.files("taskyard") / "dashboard" / "static"
    routes = app.router
    routes.add_get("/", _to_dashboard)
    routes.add_get(ROOT, _to_dashboard)
    routes.add_get(f"{ROOT}/sign-in", _sign_in_page)
    routes.add_post(f"{ROOT}/sign-in", _sign_in)
    routes.add_post(f"{ROOT}/sign-out", _sign_out)
    routes.add_get(f"{ROOT}/runs", _page(_runs))
    routes.add_post(f"{ROOT}/runs/bulk", _page(_bulk, changes=True))
    routes.add_get(f"{ROOT}/runs/{{run_id}}", _page(_run))
    routes.add_post(f"{ROOT}/runs/{{run_id}}/cancel", _page(_cancel, changes=True))
    routes.add_post(f"{ROOT}/runs/{{run_id}}/replay", _page(_replay, changes=True))
    routes.add_get(f"{ROOT}/workers", _page(_workers))
    routes.add_get(f"{ROOT}/tasks", _page(_definitions))
    routes.add_get(f"{ROOT}/tasks/{{name}}", _page(_task))
    routes.add_post(f"{ROOT}/tasks/{{name}}/trigger", _page(_trigger_task, changes=True))
    routes.add_get(f"{ROOT}/workflows/{{name}}", _page(_workflow))
    routes.add_post(f"{ROOT}/workflows/{{name}}/trigger", _page(_trigger_workflow, changes=True))
    routes.add_get(f"{ROOT}/rate-limits", _page(_rate_limits))
    routes.add_get(f"{ROOT}/tokens", _page(_tokens))
    routes.add_post(f"{ROOT}/tokens", _page(_create_token, changes=True))
    routes.add_post(f"{ROOT}/tokens/{{token_id}}/revoke", _page(_revoke_token, changes=True))
    routes.add_get(f"{ROOT}/schedules", _page(_schedules))
    routes.add_post(f"{ROOT}/crons/{{cron_id}}/{{action}}", _page(_cron_action, changes=True))
    routes.add_post(f"{ROOT}/schedules/{{schedule_id}}/delete", _page(_drop_once, changes=True))
    routes.add_get(f"{ROOT}/events", _page(_events))
    routes.add_get(f"{ROOT}/events/{{event_id}}", _page(_event))
    routes.add_post(f"{ROOT}/events/{{event_id}}/replay", _page(_replay_event, changes=True))
    routes.add_get(f"{ROOT}/live", _page(_live))
    routes.add_static(f"{ROOT}/static", str(static))


def sign_in_link(base_url: str, token: str) -> str:
    """A link that signs the browser in with `token`: the token rides in the fragment, which
    browsers never send, and the page posts it to the engine and forgets it."""
    return f"{base_url}{ROOT}/sign-in#{token}"


# -- signing in ----------------------------------------------------------------------------------


async def _to_dashboard(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{ROOT}/runs")


async def _sign_in_page(request: web.Request) -> web.StreamResponse:
    return _render(request, "sign_in.html", next=_local(request.query.get("next")), error=None)


async def _sign_in(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    target = _local(str(form.get("next", "")))
    try:
        await _authenticate(request, token)
    except Unauthorized as exc:
        return _render(request, "sign_in.html", status=401, next=target, error=str(exc))
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        token,
        path=ROOT,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def _sign_out(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(f"{ROOT}/sign-in")
    response.del_cookie(COOKIE, path=ROOT)
    raise response


async def _authenticate(request: web.Request, token: str) -> Principal:
    if not token:
        raise Unauthorized("paste an API token to sign in")
    return await request.app[ENGINE].authenticate(f"Bearer {token}")


def _csrf(token: str) -> str:
    """The CSRF token of a session: only who holds the session's token can make it."""
    return hmac.new(token.encode(), b"taskyard dashboard csrf", hashlib.sha256).hexdigest()


def _local(target: str | None) -> str:
    """Where to go after signing in: a dashboard page of this engine, never another site."""
    if target and target.startswith(f"{ROOT}/") and not target.startswith("//"):
        return target
    return f"{ROOT}/runs"


def _page(handler: Handler, *, changes: bool = False) -> Callable[..., Any]:
    """A dashboard handler for a signed-in session (others are sent to sign in); `changes`:
    a form that changes something, which must carry the session's CSRF token. An API error
    becomes a page that says what went wrong."""

    async def handle(request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(COOKIE, "")
        try:
            principal = await _authenticate(request, token)
        except Unauthorized:
            if request.method == "GET" and "HX-Request" not in request.headers:
                raise web.HTTPFound(
                    f"{ROOT}/sign-in?{urlencode({'next': request.path_qs})}"
                ) from None
            return web.Response(status=401, headers={"HX-Redirect": f"{ROOT}/sign-in"})
        request[PRINCIPAL] = principal
        request[CSRF] = _csrf(token)
        try:
            if changes:
                if principal.role not in WRITERS:
                    raise Forbidden(f"a {principal.role} token changes nothing; this needs another")
                form = await request.post()
                if not hmac.compare_digest(str(form.get("csrf", "")), request[CSRF]):
                    raise ApiError("this form is stale or did not come from the dashboard")
            return await handler(request, principal)
        except ApiError as exc:
            return _render(
                request, "error.html", status=exc.status, title=exc.code, message=str(exc)
            )

    return handle


# -- runs ----------------------------------------------------------------------------------------


class RunsForm(BaseModel):
    """The runs page's filters, as its form sends them (empty fields are no filter)."""

    status: list[RunStatus] = Field(default_factory=list)
    task: str = ""
    since: datetime | None = None
    until: datetime | None = None
    metadata: str = ""  # key=value, several separated by commas
    run_id: str = ""
    key: str = ""  # an idempotency key: its run's page
    cursor: str | None = None

    @field_validator("since", "until", "cursor", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, moment: datetime | None) -> datetime | None:
        """A moment typed without a zone is UTC, as the pages show times."""
        if moment is not None and moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment

    def query(self, **changes: Any) -> str:
        """This filter as a query string, with `changes`."""
        fields = self.model_dump(mode="json") | changes
        pairs = [("status", status) for status in fields.pop("status")]
        pairs += [(key, str(value)) for key, value in fields.items() if value not in ("", None)]
        return urlencode(pairs)

    def matching(self) -> RunFilter:
        """The runs this form's filters match, as the services take them."""
        return RunFilter(
            status=self.status,
            task=[self.task] if self.task else [],
            since=self.since,
            until=self.until,
            metadata=_metadata(self.metadata),
        )

    @property
    def filtering(self) -> bool:
        return bool(self.status or self.task or self.since or self.until or self.metadata)


def _form(query: MultiMapping[str]) -> RunsForm:
    values: dict[str, Any] = {key: query.get(key, "") for key in RunsForm.model_fields}
    values["status"] = [status for status in query.getall("status", []) if status]
    try:
        return RunsForm.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Unprocessable(f"filter {first['loc'][0]}: {first['msg']}") from None


async def _runs(request: web.Request, principal: Principal) -> web.StreamResponse:
    chosen = _form(request.query)
    if chosen.run_id:
        try:
            run_id = uuid.UUID(chosen.run_id.strip())
        except ValueError:
            raise Unprocessable(f"run id {chosen.run_id!r} is not a run id") from None
        raise web.HTTPFound(f"{ROOT}/runs/{run_id}")
    if chosen.key:
        history = request.app[ENGINE].services.history
        keyed = await history.run_with_key(principal.tenant_id, chosen.key.strip())
        if keyed is None:
            raise NotFound(f"no run has the idempotency key {chosen.key.strip()!r}")
        raise web.HTTPFound(f"{ROOT}/runs/{keyed}")
    matching = chosen.matching()
    rows = await request.app[ENGINE].services.history.list_runs(
        principal.tenant_id,
        statuses=[status.value for status in matching.status],
        tasks=matching.task,
        since=matching.since,
        until=matching.until,
        metadata=matching.metadata,
        before=page_cursor(chosen.cursor),
        limit=PAGE_SIZE,
    )
    older = chosen.query(cursor=str(rows[-1]["run_id"])) if len(rows) == PAGE_SIZE else None
    done = _DONE.fullmatch(request.query.get("done", ""))
    counts = await request.app[ENGINE].services.history.status_counts(
        principal.tenant_id,
        tasks=matching.task,
        since=matching.since,
        until=matching.until,
        metadata=matching.metadata,
        newest=COUNTED,
    )
    template = "runs_table.html" if "HX-Request" in request.headers else "runs.html"
    return _render(
        request,
        template,
        runs=rows,
        chosen=chosen,
        statuses=list(RunStatus),
        older=older,
        done=done.groupdict() if done else None,
        counts=counts,
        counted=COUNTED,
        live=chosen.cursor is None,
        table_url=f"{ROOT}/runs?{chosen.query()}",
    )


async def _run(request: web.Request, principal: Principal) -> web.StreamResponse:
    run_id = _run_id(request)
    services = request.app[ENGINE].services
    view = await services.runs.view(principal.tenant_id, run_id)
    timeline = await services.history.run_events(principal.tenant_id, run_id)
    logs = await services.history.run_logs(principal.tenant_id, run_id, limit=LOG_LINES, after=None)
    graph = await _graph(request, principal, view) if view.kind == RunKind.WORKFLOW else None
    template = "run_body.html" if "HX-Request" in request.headers else "run.html"
    return _render(
        request,
        template,
        run=view,
        timeline=timeline,
        logs=[line for _, line in logs],
        graph=graph,
        body_url=f"{ROOT}/runs/{run_id}",
    )


async def _graph(request: web.Request, principal: Principal, view: RunView) -> dict[str, Any]:
    """A workflow run's DAG for the page's graph: every step of its version, in the state its
    run is in (or `not started`)."""
    stored = await request.app[ENGINE].services.history.workflow(
        principal.tenant_id, view.task, view.workflow_version
    )
    return _dag(stored.definition, {step.step: step for step in view.steps if step.step})


def _dag(definition: WorkflowDefinition, runs: dict[str, RunSummary]) -> dict[str, Any]:
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


_DONE = re.compile(r"(?P<action>cancel|replay):(?P<changed>\d+):(?P<skipped>\d+)(?P<more>:more)?")


async def _bulk(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Cancel or replay the runs ticked on the page, or every run the page's filter matches;
    back to the same page, which says how many changed."""
    form = await request.post()
    action = form.get("action")
    if action not in ("cancel", "replay"):
        raise Unprocessable("choose cancel or replay")
    chosen = _form(MultiDict(parse_qsl(str(form.get("filter", "")))))
    if request.query.get("scope") == "matching":
        run_ids, matching = None, chosen.matching()
    else:
        try:
            run_ids = [uuid.UUID(str(run_id)) for run_id in form.getall("run_id", [])]
        except ValueError:
            raise Unprocessable("a ticked run id is not a run id") from None
        if not run_ids:
            raise Unprocessable("tick the runs to change first, or choose all that match")
        matching = None
    bulk = request.app[ENGINE].services.bulk
    change = bulk.cancel if action == "cancel" else bulk.replay
    result = await change(principal.tenant_id, run_ids, matching)
    done = f"{action}:{result.changed}:{result.skipped}{':more' if result.more else ''}"
    raise web.HTTPSeeOther(f"{ROOT}/runs?{chosen.query(cursor=None, done=done)}")


async def _cancel(request: web.Request, principal: Principal) -> web.StreamResponse:
    run_id = _run_id(request)
    await request.app[ENGINE].services.runs.cancel(principal.tenant_id, run_id)
    raise web.HTTPSeeOther(f"{ROOT}/runs/{run_id}")


async def _replay(request: web.Request, principal: Principal) -> web.StreamResponse:
    run_id = _run_id(request)
    await request.app[ENGINE].services.runs.replay(principal.tenant_id, run_id)
    raise web.HTTPSeeOther(f"{ROOT}/runs/{run_id}")


def _run_id(request: web.Request) -> uuid.UUID:
    return _path_id(request, "run_id")


def _path_id(request: web.Request, name: str) -> uuid.UUID:
    text = request.match_info[name]
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound(f"{text!r} is not a {name.replace('_id', '')} id") from None


# -- tasks and workflows ---------------------------------------------------------------------------


async def _definitions(request: web.Request, principal: Principal) -> web.StreamResponse:
    services = request.app[ENGINE].services
    tasks = await services.workers.tasks(principal.tenant_id)
    workflows = await services.history.latest_workflows(principal.tenant_id)
    return _render(request, "definitions.html", tasks=tasks, workflows=workflows)


async def _task(request: web.Request, principal: Principal) -> web.StreamResponse:
    task = await _task_info(request, principal)
    return _render(request, "task.html", task=task, form=None, problem=None)


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
        return _render(request, "task.html", status=422, task=task, form=form, problem=problem)
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
    return _render(
        request,
        "workflow.html",
        status=200 if problem is None else 422,
        workflow=stored,
        latest=latest,
        graph=_dag(stored.definition, {}),
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
    return value, _metadata(str(form.get("metadata", "")))


def _metadata(text: str) -> dict[str, str]:
    """Metadata as the forms take it: `key=value` pairs separated by commas."""
    pairs = [pair.strip() for pair in text.split(",") if pair.strip()]
    return metadata_filter([pair.replace("=", ":", 1) for pair in pairs])


# -- rate limits -----------------------------------------------------------------------------------


async def _rate_limits(request: web.Request, principal: Principal) -> web.StreamResponse:
    usage = await request.app[ENGINE].services.rate_limits.usage(principal.tenant_id)
    limits = sorted((rate_limit_view(u) for u in usage), key=lambda view: view.key)
    template = "rate_limits_table.html" if "HX-Request" in request.headers else "rate_limits.html"
    return _render(request, template, limits=limits, table_url=f"{ROOT}/rate-limits")


# -- tokens (admins) -------------------------------------------------------------------------------


def _admin(principal: Principal) -> None:
    if principal.role is not Role.ADMIN:
        raise Forbidden(f"tokens are managed with an admin token; this one is a {principal.role}")


async def _tokens(request: web.Request, principal: Principal) -> web.StreamResponse:
    _admin(principal)
    tokens = await request.app[ENGINE].services.tokens.list(principal.tenant_id)
    token_id, _, secret = request.cookies.get(NEW_TOKEN, "").partition(":")
    created = next((t for t in tokens if str(t.token_id) == token_id), None) if secret else None
    response = _render(
        request,
        "tokens.html",
        tokens=tokens,
        roles=list(Role),
        created=(created, secret) if created else None,
    )
    response.del_cookie(NEW_TOKEN, path=f"{ROOT}/tokens")
    return response


async def _create_token(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Create a token; the page it leads to shows its secret this once. The secret rides to it
    in a cookie of a minute's life, never in an address, and the page is a GET, so reloading
    it creates nothing."""
    _admin(principal)
    form = await request.post()
    try:
        role = Role(str(form.get("role", "")))
    except ValueError:
        raise Unprocessable(f"role must be one of {', '.join(Role)}") from None
    name = str(form.get("name", "")).strip()[:200]
    info, secret = await request.app[ENGINE].services.tokens.create(principal.tenant_id, role, name)
    response = web.HTTPSeeOther(f"{ROOT}/tokens")
    response.set_cookie(
        NEW_TOKEN,
        f"{info.token_id}:{secret}",
        path=f"{ROOT}/tokens",
        max_age=60,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def _revoke_token(request: web.Request, principal: Principal) -> web.StreamResponse:
    _admin(principal)
    token_id = _path_id(request, "token_id")
    if await request.app[ENGINE].services.tokens.revoke(principal.tenant_id, token_id) is None:
        raise NotFound(f"no token {token_id} in this tenant")
    raise web.HTTPSeeOther(f"{ROOT}/tokens")


# -- crons and schedules ---------------------------------------------------------------------------


async def _schedules(request: web.Request, principal: Principal) -> web.StreamResponse:
    scheduling = request.app[ENGINE].services.scheduling
    crons = await scheduling.crons(principal.tenant_id)
    once = await scheduling.one_offs(principal.tenant_id)
    return _render(request, "schedules.html", crons=crons, once=once)


async def _cron_action(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Pause, resume, trigger now (then show the run) or delete a cron."""
    cron_id = _path_id(request, "cron_id")
    action = request.match_info["action"]
    services = request.app[ENGINE].services
    if action in ("pause", "resume"):
        await services.scheduling.set_paused(principal.tenant_id, cron_id, action == "pause")
    elif action == "trigger":
        run_id = await services.scheduling.fire_now(
            principal.tenant_id, cron_id, services.runs, services.workflows
        )
        raise web.HTTPSeeOther(f"{ROOT}/runs/{run_id}")
    elif action == "delete":
        await services.scheduling.delete(principal.tenant_id, cron_id, "cron")
    else:
        raise NotFound(f"a cron has no action {action!r}")
    raise web.HTTPSeeOther(f"{ROOT}/schedules")


async def _drop_once(request: web.Request, principal: Principal) -> web.StreamResponse:
    schedule_id = _path_id(request, "schedule_id")
    await request.app[ENGINE].services.scheduling.delete(principal.tenant_id, schedule_id, "once")
    raise web.HTTPSeeOther(f"{ROOT}/schedules")


# -- events ----------------------------------------------------------------------------------------


async def _events(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Stored events, newest first, by key prefix, keyset-paged."""
    prefix = request.query.get("prefix", "").strip()
    cursor = request.query.get("cursor") or None
    rows = await request.app[ENGINE].services.history.search_events(
        principal.tenant_id,
        keys=[],
        prefix=prefix or None,
        metadata={},
        since=None,
        until=None,
        before=page_cursor(cursor),
        limit=PAGE_SIZE,
    )
    older = None
    if len(rows) == PAGE_SIZE:
        older = urlencode({"prefix": prefix, "cursor": str(rows[-1]["event_id"])})
    return _render(request, "events.html", events=rows, prefix=prefix, older=older, cursor=cursor)


async def _event(request: web.Request, principal: Principal) -> web.StreamResponse:
    event_id = _path_id(request, "event_id")
    event = await request.app[ENGINE].services.history.event(principal.tenant_id, event_id)
    return _render(request, "event.html", event=event)


async def _replay_event(request: web.Request, principal: Principal) -> web.StreamResponse:
    event_id = _path_id(request, "event_id")
    pushed = await request.app[ENGINE].services.events.replay(principal.tenant_id, event_id)
    raise web.HTTPSeeOther(f"{ROOT}/events/{pushed.event_id}")


# -- workers -------------------------------------------------------------------------------------


async def _workers(request: web.Request, principal: Principal) -> web.StreamResponse:
    workers = await request.app[ENGINE].services.workers.connected(principal.tenant_id)
    template = "workers_table.html" if "HX-Request" in request.headers else "workers.html"
    return _render(request, template, workers=workers, table_url=f"{ROOT}/workers")


# -- live ----------------------------------------------------------------------------------------


async def _live(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Server-sent events: `changed` whenever the tenant's runs changed (at most every
    LIVE_EVERY seconds), for as long as the page is open."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    with (
        request.app[ENGINE].services.runs.watch(principal.tenant_id) as changed,
        contextlib.suppress(ConnectionResetError),
    ):
        # What changed between the page's rendering and this watch has sent no event: the
        # page looks again once now, and is told of every change from here on.
        await response.write(b"event: changed\ndata: runs\n\n")
        quiet = 0.0
        while request.transport is not None and not request.transport.is_closing():
            try:
                # Woken every second at least: aiohttp does not cancel a handler whose client
                # went away, and a watch nobody reads must end.
                await asyncio.wait_for(changed.wait(), 1.0)
            except TimeoutError:
                quiet += 1.0
                if quiet >= KEEPALIVE:
                    await response.write(b": still here\n\n")
                    quiet = 0.0
                continue
            changed.clear()
            await response.write(b"event: changed\ndata: runs\n\n")
            await asyncio.sleep(LIVE_EVERY)
            quiet = LIVE_EVERY
    return response


# -- rendering -----------------------------------------------------------------------------------


def _render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    principal = request.get(PRINCIPAL)
    page = request.app[TEMPLATES].get_template(template)
    html = page.render(
        root=ROOT,
        principal=principal,
        can_change=principal is not None and principal.role in WRITERS,
        csrf=request.get(CSRF, ""),
        path=request.path,
        **context,
    )
    return web.Response(
        status=status,
        text=html,
        content_type="text/html",
        headers={
            # Everything the pages use is served from here; nothing may load from elsewhere.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _moment(value: datetime | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def _event_detail(detail: dict[str, Any]) -> str:
    """A timeline entry's detail on one line: an error as `Type: message` (its traceback is
    shown once, with the run's error), the rest as JSON."""
    rest = {key: value for key, value in detail.items() if key not in ("traceback", "type")}
    if "type" in detail and "message" in detail:
        rest.pop("message")
        error = f"{detail['type']}: {detail['message']}"
        return f"{error} {orjson.dumps(rest).decode()}" if rest else error
    return orjson.dumps(rest, default=str).decode()


def _pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()
