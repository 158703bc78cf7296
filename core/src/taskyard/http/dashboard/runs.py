"""The runs pages: the runs list (filters, counts per status, keyset pages, bulk cancel and
replay) and a run's page (its attempts, timeline, logs, streamed output and, for a workflow run,
its DAG), with the run's cancel and replay buttons."""

from __future__ import annotations

import contextlib
import html
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from aiohttp import web
from multidict import MultiDict, MultiMapping
from pydantic import BaseModel, Field, ValidationError, field_validator

from taskyard.domain.auth import Principal
from taskyard.errors import NotFound, Unprocessable
from taskyard.http.dashboard.definitions import dag
from taskyard.http.dashboard.page import (
    PAGE_SIZE,
    ROOT,
    page,
    parse_metadata,
    partial,
    path_id,
    render,
)
from taskyard.http.keys import ENGINE
from taskyard.http.routing import page_cursor
from taskyard.store.runs import WORKER_SEARCH
from taskyard_sdk.models import RunFilter, RunKind, RunStatus, RunView

COUNTED = 10_000  # the newest runs a page counts per status (a bounded, index-backed walk)
LOG_LINES = 500


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/runs", page(_runs))
    routes.add_post(f"{ROOT}/runs/bulk", page(_bulk, changes=True))
    routes.add_get(f"{ROOT}/runs/{{run_id}}", page(_run))
    routes.add_get(f"{ROOT}/runs/{{run_id}}/logs", page(_logs))
    routes.add_get(f"{ROOT}/runs/{{run_id}}/chunks", page(_chunks))
    routes.add_post(f"{ROOT}/runs/{{run_id}}/cancel", page(_cancel, changes=True))
    routes.add_post(f"{ROOT}/runs/{{run_id}}/replay", page(_replay, changes=True))


class RunsForm(BaseModel):
    """The runs page's filters, as its form sends them (empty fields are no filter)."""

    status: list[RunStatus] = Field(default_factory=list)
    task: str = ""
    since: datetime | None = None
    until: datetime | None = None
    metadata: str = ""  # key=value, several separated by commas
    worker: uuid.UUID | None = None  # runs whose latest attempt went to this worker
    run_id: str = ""
    key: str = ""  # an idempotency key: its run's page
    cursor: str | None = None

    @field_validator("since", "until", "cursor", "worker", mode="before")
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
            metadata=parse_metadata(self.metadata),
        )

    @property
    def filtering(self) -> bool:
        return bool(
            self.status or self.task or self.since or self.until or self.metadata or self.worker
        )


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
        matching,
        before=page_cursor(chosen.cursor),
        limit=PAGE_SIZE,
        worker_id=chosen.worker,
    )
    older = chosen.query(cursor=str(rows[-1]["run_id"])) if len(rows) == PAGE_SIZE else None
    done = _DONE.fullmatch(request.query.get("done", ""))
    counts = await request.app[ENGINE].services.history.status_counts(
        principal.tenant_id,
        matching,
        newest=COUNTED,
        worker_id=chosen.worker,
    )
    template = partial(request, "runs.html", "runs_table.html")
    return render(
        request,
        template,
        runs=rows,
        chosen=chosen,
        statuses=list(RunStatus),
        older=older,
        done=done.groupdict() if done else None,
        counts=counts,
        counted=COUNTED,
        searched=WORKER_SEARCH,
        live=chosen.cursor is None,
        table_url=f"{ROOT}/runs?{chosen.query()}",
    )


async def _run(request: web.Request, principal: Principal) -> web.StreamResponse:
    run_id = _run_id(request)
    services = request.app[ENGINE].services
    view = await services.runs.view(principal.tenant_id, run_id)
    timeline = await services.history.run_events(principal.tenant_id, run_id)
    durable = await services.history.durable_log(principal.tenant_id, run_id)
    graph = await _graph(request, principal, view) if view.kind == RunKind.WORKFLOW else None
    context: dict[str, Any] = {}
    if "HX-Request" not in request.headers:  # the whole page: with its logs, which tail apart
        context = await _log_lines(request, principal, view, after=None)
    return render(
        request,
        partial(request, "run.html", "run_body.html"),
        run=view,
        timeline=timeline,
        durable=durable,
        graph=graph,
        body_url=f"{ROOT}/runs/{run_id}",
        **context,
    )


async def _logs(request: web.Request, principal: Principal) -> web.StreamResponse:
    """The log lines after `after`, and what asks for the next ones (the page's live tail)."""
    run_id = _run_id(request)
    after = request.query.get("after", "0")
    if not after.isdigit():
        raise Unprocessable(f"after {after!r} is not a log line's number")
    view = await request.app[ENGINE].services.runs.view(principal.tenant_id, run_id)
    context = await _log_lines(request, principal, view, after=int(after))
    return render(request, "log_lines.html", run=view, **context)


async def _log_lines(
    request: web.Request, principal: Principal, view: RunView, *, after: int | None
) -> dict[str, Any]:
    """Up to LOG_LINES lines after `after`, and whether the tail asks again: at once when the
    page was full, in a second while the run goes on, never once it has ended and shown all.
    A run's page thus shows every line, however many, and new ones as they are written."""
    rows = await request.app[ENGINE].services.history.run_logs(
        principal.tenant_id,
        view.run_id,
        limit=LOG_LINES,
        after=after,
    )
    full = len(rows) == LOG_LINES
    return {
        "logs": [line for _, line in rows],
        "logs_after": rows[-1][0] if rows else after or 0,
        "logs_next": "load" if full else None if view.status.terminal else "load delay:1s",
    }


async def _chunks(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Server-sent events: each chunk the run's task streams, as a line of the page's streamed
    output (`chunk`), until the run ends (`end`, which closes the page's connection)."""
    run_id = _run_id(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    with contextlib.suppress(ConnectionResetError):
        async with request.app[ENGINE].services.runs.streamed(
            principal.tenant_id, run_id
        ) as chunks:
            await response.prepare(request)
            async for chunk in chunks:
                text = chunk if isinstance(chunk, str) else orjson.dumps(chunk).decode()
                line = f'<span class="chunk">{html.escape(text)}</span>\n'
                data = "".join(f"data: {part}\n" for part in line.split("\n"))
                await response.write(f"event: chunk\n{data}\n".encode())
        await response.write(b"event: end\ndata: ended\n\n")
    return response


async def _graph(request: web.Request, principal: Principal, view: RunView) -> dict[str, Any]:
    """A workflow run's DAG for the page's graph: every step of its version, in the state its
    run is in (or `not started`)."""
    stored = await request.app[ENGINE].services.history.workflow(
        principal.tenant_id, view.task, view.workflow_version
    )
    return dag(stored.definition, {step.step: step for step in view.steps if step.step})


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
        if chosen.worker is not None:
            raise Unprocessable(
                "runs are changed by worker only when ticked: the worker filter searches the "
                "newest runs, not all of them"
            )
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
    return path_id(request, "run_id")
