"""The client: define tasks, start workers, trigger and inspect runs."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar, Unpack, overload
from uuid import UUID

from pydantic import ValidationError

from taskyard_sdk._config import resolve
from taskyard_sdk._context import Context
from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk._events import Events
from taskyard_sdk._pauses import Pauses
from taskyard_sdk._rate_limits import RateLimits
from taskyard_sdk._runnable import wait_for_runs
from taskyard_sdk._schedules import Crons, Schedules
from taskyard_sdk._task import BatchTask, Task, TaskSettings, build_options
from taskyard_sdk._transport import Transport, run_sync
from taskyard_sdk._worker import Worker
from taskyard_sdk._workflow import Workflow
from taskyard_sdk.models import (
    Batching,
    BulkResult,
    Concurrency,
    DurableEntry,
    LabelValue,
    LogPage,
    RunFilter,
    RunPage,
    RunStatus,
    RunView,
    Sticky,
    TaskOptions,
)

In = TypeVar("In")
Out = TypeVar("Out")


class Taskyard:
    """Entry point of the SDK.

    ty = Taskyard()  # TASKYARD_URL / TASKYARD_TOKEN, or a local engine's .taskyard/token

    @ty.task(retries=3, execution_timeout="30s")
    async def resize(image: Image, ctx: Context) -> Thumbnail: ...

    ty.worker("images", tasks=[resize]).start()      # in the worker process
    thumbnail = resize.run(Image(url="..."))          # anywhere else
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        retry_for: float = 30.0,
        channel: bool = True,
    ) -> None:
        """`retry_for`: seconds to keep retrying requests the engine could not take (it is
        down, or its database is restarting) before raising. `channel`: send calls over one
        websocket to the engine (a third of the cost of an HTTP request each, the same API);
        False sends each over HTTP."""
        self.config = resolve(url, token)
        self.transport = Transport(self.config, retry_for, channel=channel)
        self.runs = Runs(self)
        self.events = Events(self)
        self.rate_limits = RateLimits(self)
        self.crons = Crons(self)
        self.schedules = Schedules(self)
        self.pauses = Pauses(self)

    def connect_to(self, url: str, token: str | None = None) -> None:
        """Send this client's calls to another engine from now on (resolved as the
        constructor does): how a test suite points an application's own client at the
        `taskyard_engine` fixture."""
        replaced = self.transport
        self.config = resolve(url, token)
        self.transport = Transport(self.config, replaced.retry_for, channel=replaced.use_channel)
        replaced.close_soon()

    @property
    def url(self) -> str:
        """The engine node calls go to now (of the URLs given, the first that answers)."""
        return self.transport.url

    def __repr__(self) -> str:
        return f"<Taskyard {self.url} token from {self.config.token_source}>"

    @overload
    def task(self, fn: Callable[[In, Context], Awaitable[Out]], /) -> Task[In, Out]: ...

    @overload
    def task(self, fn: Callable[[In], Awaitable[Out]], /) -> Task[In, Out]: ...

    @overload
    def task(self, fn: Callable[[In, Context], Out], /) -> Task[In, Out]: ...

    @overload
    def task(self, fn: Callable[[In], Out], /) -> Task[In, Out]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        on_crons: str | Sequence[str] = (),
        **settings: Unpack[TaskSettings],
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        on_crons: str | Sequence[str] = (),
        **settings: Unpack[TaskSettings],
    ) -> Any:
        """Declare a task: `(input: Model, ctx: Context) -> output`, async or sync.

        retries: retries after the first attempt (default 0). backoff_factor: retry n waits
        min(backoff_factor ** n, backoff_max_seconds) seconds (no factor: retry at once).
        execution_timeout (default "60s"): longest an attempt may run. schedule_timeout
        (default "5m"): longest a run may wait to start. priority: 1 (lowest) to 4, default 2.
        queue: the queue whose workers run it. order: "fifo" or "lifo" within a priority.
        concurrency: Concurrency(...) limits per key. rate_limits: RateLimit(...) units taken
        when a run starts. desired_worker_labels: {"gpu": Label("a100", required=True)}.
        slot_cost: worker slots an attempt takes (default 1): it starts only on a worker with
        that many free. on_crons: cron expressions (UTC) that run it with input None,
        registered by its workers.
        """
        options = build_options(settings)

        def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
            return Task(self, function, name or function.__name__, options, crons=on_crons)

        return decorate(fn) if fn is not None else decorate

    def durable_task(
        self,
        *,
        name: str | None = None,
        on_crons: str | Sequence[str] = (),
        **settings: Unpack[TaskSettings],
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Declare a durable task: an async `(input, ctx: DurableContext) -> output` whose
        `ctx.sleep`, `ctx.wait_for_event`, `ctx.wait_for`, `ctx.memo` and children's `aio_run`
        are logged, so that a retry or a crash resumes it where it was, and whose waits hold no
        worker slot. Takes every option `task` does."""
        options = build_options(settings).model_copy(update={"durable": True})

        def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or function.__name__
            if not inspect.iscoroutinefunction(function):
                raise TypeError(
                    f"durable task {task_name!r} must be an async function: its waits are awaited"
                )
            return Task(self, function, task_name, options, crons=on_crons)

        return decorate

    def batch_task(
        self,
        *,
        max_size: int = 100,
        max_wait: Duration = "1s",
        key: str | None = None,
        name: str | None = None,
        **settings: Unpack[TaskSettings],
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Declare a batch task: `(inputs: list[In], ctx: BatchContext) -> list[Out] | Out`.
        Each trigger is a run of its own, with one input; the engine gathers queued runs of
        the same `key` (CEL over `input` and `metadata`, e.g. "input.account_id"; none: all
        together) and hands up to `max_size` of them to one attempt, once that many are
        queued or the oldest has waited `max_wait`. Returning a list gives each run its own
        output (in input order); anything else is every run's. A failure fails every run of
        the batch, each retried by `retries`. Takes the options `task` does, but concurrency,
        rate limits and sticky (a batch's runs start together)."""
        batching = Batching(
            max_size=max_size, max_wait=parse_duration(max_wait, name="max_wait"), key=key
        )
        try:
            options = build_options(settings).model_copy(update={"batch": batching})
            options = TaskOptions.model_validate(options.model_dump())  # the batch's own rules
        except ValidationError as exc:
            raise TypeError(f"batch task: {exc.errors()[0]['msg']}") from None

        def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
            return BatchTask(self, function, name or function.__name__, options)

        return decorate

    def workflow(
        self,
        name: str,
        *,
        input: type[In] | Any = Any,
        on_events: str | Sequence[str] = (),
        event_filter: str | None = None,
        sticky: Sticky | str | None = None,
        concurrency: Concurrency | Sequence[Concurrency] = (),
        on_crons: str | Sequence[str] = (),
    ) -> Workflow[In]:
        """Declare a workflow: a DAG of steps added with `@wf.task(parents=[...])`.

        input: the model every step receives. on_events: event keys that trigger a run (exact,
        or a prefix ending in "*"), with the event's payload as input; event_filter: CEL over
        `payload`, `metadata` and `key` that such an event must satisfy. sticky: "soft" or
        "hard": run every step on the worker that ran the run's first step. concurrency: limits
        on runs going at once per key; a run waits, queued, until admitted. on_crons: cron
        expressions (UTC) that start runs with input None, kept in sync on registration.
        """
        levels = [concurrency] if isinstance(concurrency, Concurrency) else list(concurrency)
        return Workflow(
            self,
            name,
            input=input,
            on_events=on_events,
            event_filter=event_filter,
            sticky=Sticky(sticky) if sticky is not None else None,
            concurrency=levels,
            on_crons=on_crons,
        )

    def worker(
        self,
        name: str,
        tasks: Sequence[Task[Any, Any] | Workflow[Any]] = (),
        *,
        workflows: Sequence[Task[Any, Any] | Workflow[Any]] = (),
        slots: int = 100,
        labels: dict[str, LabelValue] | None = None,
        queue: str | None = None,
        drain_timeout: float = 30.0,
        lifespan: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        health_port: int | None = None,
        health_host: str = "127.0.0.1",
        block_threshold: float = 1.0,
    ) -> Worker:
        """A worker process's runtime: it runs tasks and the steps of workflows (which it
        registers when it starts), given in either list. `slots` is how many tasks it runs at
        once. `lifespan`: an async context manager (factory) entered before the first task and
        left after the drain; what it yields fills the tasks' parameters after the input and
        context, by type or by `Depends(...)` (see `taskyard_sdk.Depends`).

        `health_port`: serve `/health` and `/metrics` there (0 picks a free port; see
        `worker.health_url`), on `health_host`. An event loop blocked for longer than
        `block_threshold` seconds is logged with the task that blocks it, and makes `/health`
        answer 503 while it lasts."""
        given_tasks, given_workflows = _tasks_and_workflows(name, [*tasks, *workflows])
        every_task = [*given_tasks, *(t for workflow in given_workflows for t in workflow.tasks)]
        queues = {task.options.queue for task in every_task}
        if queue is None:
            if len(queues) > 1:
                raise ValueError(
                    f"worker {name!r}: its tasks use several queues "
                    f"({', '.join(sorted(queues))}); a worker serves one queue"
                )
            queue = queues.pop() if queues else "default"
        return Worker(
            self,
            name,
            every_task,
            workflows=given_workflows,
            slots=slots,
            labels=labels,
            queue=queue,
            drain_timeout=drain_timeout,
            lifespan=lifespan,
            health_port=health_port,
            health_host=health_host,
            block_threshold=block_threshold,
        )

    async def aio_close(self) -> None:
        """Close this event loop's connections to the engine."""
        await self.transport.close()

    def close(self) -> None:
        """Close the connections the blocking API (`run`, `push`, ...) opened."""
        run_sync(self.transport.close())


def _tasks_and_workflows(
    worker: str, given: Sequence[Any]
) -> tuple[list[Task[Any, Any]], list[Workflow[Any]]]:
    tasks: list[Task[Any, Any]] = []
    workflows: list[Workflow[Any]] = []
    for item in given:
        if isinstance(item, Workflow):
            workflows.append(item)
        elif isinstance(item, Task):
            tasks.append(item)
        else:
            raise TypeError(
                f"worker {worker!r}: {item!r} is neither a task nor a workflow (give "
                f"what @ty.task, @ty.durable_task or ty.workflow returned)"
            )
    return tasks, workflows


class Runs:
    """Reading and steering runs by id: `ty.runs.get(run_id)`, `ty.runs.cancel(run_id)`, ..."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_get(self, run_id: UUID | str) -> RunView:
        data = await self._client.transport.request("GET", f"/api/v1/runs/{run_id}")
        return RunView.model_validate(data)

    async def aio_wait(
        self, run_ids: Sequence[UUID], timeout: float | None = None, *, enqueued: bool = False
    ) -> dict[UUID, RunView]:
        """Wait until every run has finished (e.g. those an event triggered); raises
        ResultTimeout after `timeout` seconds. `enqueued`: the runs were enqueued through an
        outbox (ids stored by `run_in`), so one the engine has not drained yet is waited for
        rather than refused as unknown."""
        return await wait_for_runs(self._client, list(run_ids), timeout, appearing=enqueued)

    async def aio_cancel(self, run_id: UUID | str) -> RunStatus:
        data = await self._client.transport.request("POST", f"/api/v1/runs/{run_id}/cancel")
        return RunStatus(data["status"])

    async def aio_replay(self, run_id: UUID | str) -> RunView:
        data = await self._client.transport.request("POST", f"/api/v1/runs/{run_id}/replay")
        return RunView.model_validate(data)

    async def aio_cancel_many(
        self,
        run_ids: Sequence[UUID | str] | None = None,
        *,
        status: Sequence[RunStatus | str] = (),
        task: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        metadata: dict[str, str] | None = None,
    ) -> BulkResult:
        """Cancel the runs named (up to 10,000), or the unfinished runs the filters match
        (up to 10,000 a call: `more` says when there are others). Runs that are finished
        already are skipped and counted, with their reasons."""
        body = _bulk_body(run_ids, status, task, since, until, metadata)
        data = await self._client.transport.request("POST", "/api/v1/runs/cancel", json_body=body)
        return BulkResult.model_validate(data)

    async def aio_replay_many(
        self,
        run_ids: Sequence[UUID | str] | None = None,
        *,
        status: Sequence[RunStatus | str] = (),
        task: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        metadata: dict[str, str] | None = None,
    ) -> BulkResult:
        """Replay the runs named, or the finished runs the filters match (up to 10,000 a
        call). Unfinished runs and workflows' steps are skipped, with their reasons."""
        body = _bulk_body(run_ids, status, task, since, until, metadata)
        data = await self._client.transport.request("POST", "/api/v1/runs/replay", json_body=body)
        return BulkResult.model_validate(data)

    async def aio_list(
        self,
        *,
        status: Sequence[RunStatus | str] = (),
        task: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        metadata: dict[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        params: list[tuple[str, str]] = [("limit", str(limit))]
        params += [("status", str(s)) for s in status] + [("task", t) for t in task]
        params += [("metadata", f"{k}:{v}") for k, v in (metadata or {}).items()]
        if since is not None:
            params.append(("since", since.isoformat()))
        if until is not None:
            params.append(("until", until.isoformat()))
        if cursor is not None:
            params.append(("cursor", cursor))
        data = await self._client.transport.request("GET", "/api/v1/runs", params=params)
        return RunPage.model_validate(data)

    async def aio_logs(
        self, run_id: UUID | str, *, after: int | None = None, limit: int = 500
    ) -> LogPage:
        """The run's log lines (`ctx.log`), oldest first: up to `limit` (at most 5000) after
        `after`, the `next_after` of the page before. A run still going has more to come:
        ask again from the last `next_after`."""
        params = [("limit", str(limit))]
        if after is not None:
            params.append(("after", str(after)))
        data = await self._client.transport.request(
            "GET", f"/api/v1/runs/{run_id}/logs", params=params
        )
        return LogPage.model_validate(data)

    async def aio_durable_log(self, run_id: UUID | str) -> list[DurableEntry]:
        """A durable run's log by position: memoised steps, children spawned and waits (the
        one not `done` is the wait it is suspended in). Empty for a run that is not durable."""
        data = await self._client.transport.request("GET", f"/api/v1/runs/{run_id}/durable-log")
        return [DurableEntry.model_validate(entry) for entry in data]

    def durable_log(self, run_id: UUID | str) -> list[DurableEntry]:
        return run_sync(self.aio_durable_log(run_id))

    def get(self, run_id: UUID | str) -> RunView:
        return run_sync(self.aio_get(run_id))

    def logs(self, run_id: UUID | str, *, after: int | None = None, limit: int = 500) -> LogPage:
        return run_sync(self.aio_logs(run_id, after=after, limit=limit))

    def cancel(self, run_id: UUID | str) -> RunStatus:
        return run_sync(self.aio_cancel(run_id))

    def wait(
        self, run_ids: Sequence[UUID], timeout: float | None = None, *, enqueued: bool = False
    ) -> dict[UUID, RunView]:
        return run_sync(self.aio_wait(run_ids, timeout, enqueued=enqueued))

    def replay(self, run_id: UUID | str) -> RunView:
        return run_sync(self.aio_replay(run_id))

    def list(self, **filters: Any) -> RunPage:
        return run_sync(self.aio_list(**filters))

    def cancel_many(
        self, run_ids: Sequence[UUID | str] | None = None, **filters: Any
    ) -> BulkResult:
        return run_sync(self.aio_cancel_many(run_ids, **filters))

    def replay_many(
        self, run_ids: Sequence[UUID | str] | None = None, **filters: Any
    ) -> BulkResult:
        return run_sync(self.aio_replay_many(run_ids, **filters))


def _bulk_body(
    run_ids: Sequence[UUID | str] | None,
    status: Sequence[RunStatus | str],
    task: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    metadata: dict[str, str] | None,
) -> dict[str, Any]:
    filtering = bool(status or task or since or until or metadata)
    if run_ids is not None:
        if filtering:
            raise TypeError("give run ids or filters, not both")
        return {"run_ids": [str(run_id) for run_id in run_ids]}
    matching = RunFilter(
        status=[RunStatus(s) for s in status],
        task=list(task),
        since=since,
        until=until,
        metadata=metadata or {},
    )
    return {"filter": matching.model_dump(mode="json", exclude_defaults=True)}
