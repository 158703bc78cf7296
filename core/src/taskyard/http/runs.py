"""Runs: trigger (one or a batch), read, list, wait for results, cancel, replay; plus the
connected workers and registered tasks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from taskyard.domain.auth import READERS, WRITERS
from taskyard.http.keys import ENGINE
from taskyard.http.routing import (
    METADATA_PAIRS,
    PG_BIGINT_MAX,
    Call,
    Document,
    Router,
    WithStatus,
    metadata_filter,
    page_cursor,
)
from taskyard.services.views import QueueInfo, TaskInfo, WorkerInfo
from taskyard_sdk.models import (
    BatchTriggerRequest,
    BatchTriggerResponse,
    BulkRequest,
    BulkResult,
    DurableEntry,
    LogPage,
    RunEvent,
    RunFilter,
    RunPage,
    RunRef,
    RunStatus,
    RunView,
    TriggerRequest,
    WaitRequest,
    WaitResponse,
)

router = Router(tags=("runs",))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ListRunsQuery(BaseModel):
    status: list[RunStatus] = Field(default_factory=list)
    task: list[str] = Field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    metadata: list[str] = Field(
        default_factory=list, description="key:value, repeatable", json_schema_extra=METADATA_PAIRS
    )
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = None

    @field_validator("since", "until")
    @classmethod
    def _not_before_1970(cls, moment: datetime | None) -> datetime | None:
        """Run ids hold their creation time since 1970, and no run is older: an earlier moment
        filters as 1970 does (it has no run id to start from)."""
        return EPOCH if moment is not None and moment.timestamp() < 0 else moment


class ResultQuery(BaseModel):
    timeout: float = Field(default=30.0, ge=0, le=300)


class LogsQuery(BaseModel):
    after: int | None = Field(
        default=None, ge=0, le=PG_BIGINT_MAX, description="The `next_after` of a page."
    )
    limit: int = Field(default=500, ge=1, le=5000)


class CancelResult(BaseModel):
    run_id: uuid.UUID
    status: RunStatus


REPLAYED = {200: "An idempotency key matched an existing run: that run (see `idempotent_replay`)."}


async def tell_replays(call: Call[Any], inputs: list[Any], refs: list[RunRef]) -> list[RunRef]:
    """Refs of runs an idempotency key found (`created` false) marked as replays, with the
    task they are of and whether they were triggered with another input than `inputs` (one
    per ref). Only such refs cost a read."""
    replayed = [(ref, given) for ref, given in zip(refs, inputs, strict=True) if not ref.created]
    if not replayed:
        return refs
    engine = call.request.app[ENGINE]
    stored = await engine.services.history.run_documents(
        call.principal.tenant_id, [ref.run_id for ref, _ in replayed]
    )
    for ref, given in replayed:
        ref.idempotent_replay = True
        existing = stored.get(ref.run_id)
        if existing is not None:
            ref.task = existing["task"]
            ref.input_differs = not same_json(existing["input"], given)
    return refs


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 are one number (jsonb keeps no difference), true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@router.post(
    "/api/v1/runs",
    roles=WRITERS,
    body=TriggerRequest,
    response=RunRef,
    status=201,
    other_statuses=REPLAYED,
)
async def trigger(call: Call[TriggerRequest]) -> WithStatus | RunRef:
    """Trigger one run of a task. With an idempotency key that was used before, the existing
    run is returned (status 200, `idempotent_replay` true, and `input_differs` when this
    request's input is not that run's) instead of a new one (201)."""
    engine = call.request.app[ENGINE]
    [ref] = await tell_replays(
        call,
        [call.body.input],
        await engine.services.runs.trigger(call.principal.tenant_id, [call.body]),
    )
    if not ref.created:
        return WithStatus(200, ref)
    return ref


@router.post(
    "/api/v1/runs/batch",
    roles=WRITERS,
    body=BatchTriggerRequest,
    response=BatchTriggerResponse,
    status=201,
)
async def trigger_batch(call: Call[BatchTriggerRequest]) -> BatchTriggerResponse:
    """Trigger many runs in one request (and one transaction); runs an idempotency key found
    are answered as by `POST /api/v1/runs`, with `idempotent_replay`."""
    engine = call.request.app[ENGINE]
    refs = await engine.services.runs.trigger(
        call.principal.tenant_id, call.body.runs, call.body.options
    )
    return BatchTriggerResponse(
        runs=await tell_replays(call, [run.input for run in call.body.runs], refs)
    )


@router.get("/api/v1/runs", roles=READERS, query=ListRunsQuery, response=RunPage)
async def list_runs(call: Call[None]) -> Document:
    """List runs, newest first, filtered by status, task, creation time and metadata."""
    query: ListRunsQuery = call.query
    matching = RunFilter(
        status=query.status,
        task=query.task,
        since=query.since,
        until=query.until,
        metadata=metadata_filter(query.metadata),
    )
    rows = await call.request.app[ENGINE].services.history.list_runs(
        call.principal.tenant_id, matching, before=page_cursor(query.cursor), limit=query.limit
    )
    cursor = str(rows[-1]["run_id"]) if len(rows) == query.limit else None
    return Document({"runs": rows, "next_cursor": cursor})


@router.post("/api/v1/runs/wait", roles=READERS, body=WaitRequest, response=WaitResponse)
async def wait_runs(call: Call[WaitRequest]) -> Document:
    """Wait (up to `timeout` seconds) until the given runs have finished."""
    engine = call.request.app[ENGINE]
    finished, pending = await engine.services.runs.wait(
        call.principal.tenant_id, call.body.run_ids, call.body.timeout
    )
    return Document({"runs": finished, "pending": pending})


@router.post("/api/v1/runs/cancel", roles=WRITERS, body=BulkRequest, response=BulkResult)
async def cancel_runs(call: Call[BulkRequest]) -> BulkResult:
    """Cancel many runs: `run_ids`, or the unfinished runs `filter` matches (at most 10,000 a
    call; `more` says when the filter matched more). Finished runs are skipped, with reasons."""
    bulk = call.request.app[ENGINE].services.bulk
    return await bulk.cancel(call.principal.tenant_id, call.body.run_ids, call.body.filter)


@router.post("/api/v1/runs/replay", roles=WRITERS, body=BulkRequest, response=BulkResult)
async def replay_runs(call: Call[BulkRequest]) -> BulkResult:
    """Replay many runs: `run_ids`, or the finished runs `filter` matches (at most 10,000 a
    call). Unfinished runs and workflows' steps are skipped, with reasons."""
    bulk = call.request.app[ENGINE].services.bulk
    return await bulk.replay(call.principal.tenant_id, call.body.run_ids, call.body.filter)


@router.get("/api/v1/runs/{run_id}", roles=READERS, response=RunView)
async def get_run(call: Call[None]) -> RunView:
    """A run: status, attempts with their timings, output or error."""
    engine = call.request.app[ENGINE]
    return await engine.services.runs.view(call.principal.tenant_id, call.path_uuid("run_id"))


@router.get("/api/v1/runs/{run_id}/result", roles=READERS, query=ResultQuery, response=RunView)
async def run_result(call: Call[None]) -> RunView:
    """Long-poll: answers once the run has finished, or after `timeout` seconds with its
    current state."""
    engine = call.request.app[ENGINE]
    return await engine.services.runs.result(
        call.principal.tenant_id, call.path_uuid("run_id"), call.query.timeout
    )


@router.get("/api/v1/runs/{run_id}/stream", roles=READERS, channel=False)
async def stream_run(call: Call[None]) -> web.StreamResponse:
    """Server-sent events: each chunk the task streams (`ctx.stream`) as a `data:` line while
    the run goes on, then `event: end` with the run's final status. Live only: chunks streamed
    before the subscription are not replayed."""
    run_id = call.path_uuid("run_id")
    tenant_id = call.principal.tenant_id
    services = call.request.app[ENGINE].services
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        async with services.runs.streamed(tenant_id, run_id) as chunks:
            await response.prepare(call.request)
            async for chunk in chunks:
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        statuses = await services.history.run_statuses(tenant_id, [run_id])
        await response.write(
            b"event: end\ndata: " + orjson.dumps({"status": statuses[run_id].value}) + b"\n\n"
        )
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nobody to answer
        pass
    return response


@router.get("/api/v1/runs/{run_id}/events", roles=READERS, response=list[RunEvent])
async def run_events(call: Call[None]) -> list[RunEvent]:
    """Every state transition of the run, in order."""
    history = call.request.app[ENGINE].services.history
    return await history.run_events(call.principal.tenant_id, call.path_uuid("run_id"))


@router.get("/api/v1/runs/{run_id}/logs", roles=READERS, query=LogsQuery, response=LogPage)
async def run_logs(call: Call[None]) -> LogPage:
    """The run's log lines, oldest first, paged with `after`."""
    history = call.request.app[ENGINE].services.history
    rows = await history.run_logs(
        call.principal.tenant_id,
        call.path_uuid("run_id"),
        limit=call.query.limit,
        after=call.query.after,
    )
    return LogPage(lines=[line for _, line in rows], next_after=rows[-1][0] if rows else None)


@router.get("/api/v1/runs/{run_id}/durable-log", roles=READERS, response=list[DurableEntry])
async def durable_log(call: Call[None]) -> list[DurableEntry]:
    """A durable run's log: its memoised steps, children spawned and waits, by position (the
    one not done is the wait it is suspended in). Empty for a run that is not durable."""
    history = call.request.app[ENGINE].services.history
    return await history.durable_log(call.principal.tenant_id, call.path_uuid("run_id"))


@router.post("/api/v1/runs/{run_id}/cancel", roles=WRITERS, response=CancelResult)
async def cancel_run(call: Call[None]) -> CancelResult:
    """Cancel a queued or running run (a running one's worker is told to stop)."""
    run_id = call.path_uuid("run_id")
    engine = call.request.app[ENGINE]
    status = await engine.services.runs.cancel(call.principal.tenant_id, run_id)
    return CancelResult(run_id=run_id, status=status)


@router.post("/api/v1/runs/{run_id}/replay", roles=WRITERS, response=RunView)
async def replay_run(call: Call[None]) -> RunView:
    """Run a finished run again: a new attempt with the same input."""
    run_id = call.path_uuid("run_id")
    engine = call.request.app[ENGINE]
    await engine.services.runs.replay(call.principal.tenant_id, run_id)
    return await engine.services.runs.view(call.principal.tenant_id, run_id)


@router.get("/api/v1/workers", roles=READERS, response=list[WorkerInfo])
async def list_workers(call: Call[None]) -> list[WorkerInfo]:
    """Workers connected now."""
    return await call.request.app[ENGINE].services.workers.connected(call.principal.tenant_id)


@router.get("/api/v1/queues", roles=READERS, response=list[QueueInfo])
async def list_queues(call: Call[None]) -> list[QueueInfo]:
    """The tenant's queues: runs by state, the oldest queued run, slots, the last hour by the
    minute, queue-wait percentiles and the busiest concurrency keys."""
    return await call.request.app[ENGINE].services.queues.overview(call.principal.tenant_id)


@router.get("/api/v1/tasks", roles=READERS, response=list[TaskInfo])
async def list_tasks(call: Call[None]) -> list[TaskInfo]:
    """Tasks registered by workers, with their options and the workers connected for them."""
    return await call.request.app[ENGINE].services.workers.tasks(call.principal.tenant_id)
