"""Tasks: decorated functions that the engine runs on workers, and handles to their runs."""

from __future__ import annotations

import asyncio
import inspect
import time
import typing
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypedDict, TypeVar
from uuid import UUID, uuid4

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json, to_jsonable_python

from taskyard_sdk._arguments import strings
from taskyard_sdk._context import Context, current_run
from taskyard_sdk._durable import child_results, current_durable
from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk._errors import InvalidInput, ResultTimeout, TaskFailed
from taskyard_sdk._resources import task_parameters
from taskyard_sdk._schedules import Schedulable
from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import (
    BatchTriggerResponse,
    Concurrency,
    Label,
    LabelValue,
    QueueOrder,
    RateLimit,
    RunRef,
    RunStatus,
    RunView,
    StepContext,
    Sticky,
    TaskOptions,
    WaitResponse,
)

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard

In = TypeVar("In")
Out = TypeVar("Out")
OutCo = TypeVar("OutCo", covariant=True)

_POLL = 60.0  # longest single long-poll; waits longer than this are several polls
_WAIT_CHUNK = 10_000
_BATCH_RUNS = 10_000  # the engine's limit per batch request
_BATCH_BYTES = 512 * 1024  # well under the engine's default request limit (1 MiB)


def batch_bodies(
    runs: Iterable[dict[str, Any]], head: dict[str, Any] | None = None
) -> Iterator[bytes]:
    """Batch request bodies `{**head, "runs": [...]}`, in order: each run encoded once, at most
    _BATCH_RUNS runs and about _BATCH_BYTES of JSON to a body."""
    prefix = to_json(head)[:-1] + b',"runs":[' if head else b'{"runs":['
    chunk: list[bytes] = []
    size = len(prefix)
    for run in runs:
        encoded = to_json(run)
        if chunk and (len(chunk) == _BATCH_RUNS or size + len(encoded) > _BATCH_BYTES):
            yield prefix + b",".join(chunk) + b"]}"
            chunk, size = [], len(prefix)
        chunk.append(encoded)
        size += len(encoded) + 1
    if chunk:
        yield prefix + b",".join(chunk) + b"]}"


class TaskSettings(TypedDict, total=False):
    """The options every task and workflow step takes (see `TaskOptions` for each one)."""

    retries: int
    backoff_factor: float | None
    backoff_max_seconds: Duration
    execution_timeout: Duration
    schedule_timeout: Duration
    priority: int
    queue: str
    order: QueueOrder | str
    concurrency: Concurrency | Sequence[Concurrency]
    rate_limits: RateLimit | Sequence[RateLimit]
    desired_worker_labels: Mapping[str, Label | LabelValue]
    sticky: Sticky | str | None


_DURATIONS = ("backoff_max_seconds", "execution_timeout", "schedule_timeout")


def build_options(settings: TaskSettings) -> TaskOptions:
    """A task's options from what users write (durations as "30s", "5m"; one Concurrency or
    RateLimit, or a list of them)."""
    values: dict[str, Any] = dict(settings)
    for name in _DURATIONS:
        if name in values:
            values[name] = parse_duration(values[name], name=name)
    for name in ("concurrency", "rate_limits"):
        if isinstance(values.get(name), Concurrency | RateLimit):
            values[name] = [values[name]]
    return TaskOptions(**values)


def _step_name(step: Any) -> str:
    return step if isinstance(step, str) else str(step.step)


class Task(Schedulable, Generic[In, Out]):
    """A task function registered with a client. Call it directly to run it in-process (for
    tests); use `run` / `aio_run` to run it on a worker through the engine."""

    def __init__(
        self,
        client: Taskyard,
        fn: Callable[..., Any],
        name: str,
        options: TaskOptions,
        *,
        default_input: Any = Any,
        crons: str | Sequence[str] = (),
    ) -> None:
        self.client = client
        self.fn = fn
        self.name = name
        self.options = options
        self.crons = strings(crons, f"task {name!r}: on_crons")  # registered by its workers
        self.is_async = inspect.iscoroutinefunction(fn)
        hints = typing.get_type_hints(fn)
        input_name, self._takes_context, self.dependencies = task_parameters(fn, name)
        self.input_type: Any = hints.get(input_name, default_input)
        self.output_type: Any = hints.get("return", Any)
        self._input = TypeAdapter(self.input_type)
        self._output = TypeAdapter(self.output_type)
        self._options_json = options.model_dump(mode="json")  # sent with every trigger

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, input: In, ctx: Context, state: Any = None) -> Any:
        """The function on `input`, with the context if it takes one and its dependencies
        from `state` (a worker's lifespan state)."""
        filled = {d.parameter: d.resolve(state, self.name) for d in self.dependencies}
        return self.fn(input, ctx, **filled) if self._takes_context else self.fn(input, **filled)

    # -- input and output ------------------------------------------------------------------------

    def encode_input(self, value: Any) -> Any:
        """Validate against the input model and turn into JSON-able data (before sending)."""
        try:
            validated = self._input.validate_python(value)
        except ValidationError as exc:
            raise InvalidInput(f"input for task {self.name!r} is invalid: {exc}") from None
        return to_jsonable_python(validated)

    def _schedule_target(self) -> dict[str, str]:
        return {"task": self.name}

    def _schedule_input(self, input: Any) -> Any:
        return self.encode_input(input)

    def decode_input(self, data: Any) -> Any:
        return self._input.validate_python(data)

    def encode_output(self, value: Any) -> Any:
        return to_jsonable_python(value)

    def decode_output(self, data: Any) -> Out:
        return self._output.validate_python(data)  # type: ignore[no-any-return]

    def _trigger(
        self,
        input: In,
        metadata: dict[str, str] | None,
        priority: int | None,
        idempotency_key: str | None,
        *,
        options: bool = True,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"task": self.name, "input": self.encode_input(input)}
        if options:
            request["options"] = self._options_json
        if metadata:
            request["metadata"] = metadata
        if priority is not None:
            request["priority"] = priority
        if idempotency_key is not None:
            request["idempotency_key"] = idempotency_key
        spawned_by = current_run.get()
        if spawned_by is not None:
            request["parent_run_id"] = str(spawned_by)
        return request

    # -- running here, for tests ----------------------------------------------------------------

    async def aio_mock_run(
        self,
        input: In,
        *,
        parents: Mapping[Any, Any] | None = None,
        skipped: Sequence[Any] = (),
        metadata: dict[str, str] | None = None,
        attempt: int = 1,
        resources: Any = None,
    ) -> Out:
        """Run the function in this process, as a worker would but without an engine: the
        input is validated and sent through JSON, the context is the task's own (`ctx.log`
        lines go to the `taskyard.task` logger), and the output comes back as `run` returns
        it. For a workflow step, `parents` are its parents' outputs by step (name or object)
        and `skipped` the parents that were skipped. `resources`: what the worker's lifespan
        would provide (its dependencies are filled from it)."""
        if self.options.durable:
            raise TypeError(
                f"durable task {self.name!r} keeps its log in the engine: test it "
                f"with a worker (the taskyard_client fixture)"
            )
        value = self.decode_input(self.encode_input(input))
        step = getattr(self, "step", None)
        context = None
        if step is not None:
            context = StepContext(
                workflow_run_id=uuid4(),
                step=step,
                parents={_step_name(p): to_jsonable_python(v) for p, v in (parents or {}).items()},
                skipped=[_step_name(p) for p in skipped],
            )
        elif parents or skipped:
            raise TypeError(f"task {self.name!r} is not a workflow step: it has no parents")
        ctx = Context(
            run_id=uuid4(),
            attempt=attempt,
            task=self.name,
            metadata=metadata or {},
            loop=asyncio.get_running_loop(),
            send=lambda message: None,
            step=context,
        )
        result = self(value, ctx, resources)
        if inspect.isawaitable(result):
            result = await result
        return self.decode_output(self.encode_output(result))

    def mock_run(
        self,
        input: In,
        *,
        parents: Mapping[Any, Any] | None = None,
        skipped: Sequence[Any] = (),
        metadata: dict[str, str] | None = None,
        attempt: int = 1,
        resources: Any = None,
    ) -> Out:
        return run_sync(
            self.aio_mock_run(
                input,
                parents=parents,
                skipped=skipped,
                metadata=metadata,
                attempt=attempt,
                resources=resources,
            )
        )

    # -- running through the engine --------------------------------------------------------------

    async def aio_run_no_wait(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle[Out]:
        body = self._trigger(input, metadata, priority, idempotency_key)
        ref = RunRef.model_validate(
            await self.client.transport.request("POST", "/api/v1/runs", json_body=body)
        )
        return RunHandle(self, ref.run_id)

    async def aio_run(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Out:
        durable = current_durable.get()
        if durable is not None:  # a durable task's child: spawned once, its result logged
            [result] = child_results(self, await durable.run_children(self, [input]))
            if isinstance(result, TaskFailed):
                raise result
            return result  # type: ignore[no-any-return]
        handle = await self.aio_run_no_wait(
            input, metadata=metadata, priority=priority, idempotency_key=idempotency_key
        )
        return await handle.aio_result(timeout=timeout)

    async def aio_run_many_no_wait(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        handles: list[RunHandle[Out]] = []
        runs = (self._trigger(value, metadata, priority, None, options=False) for value in inputs)
        for body in batch_bodies(runs, {"options": self._options_json}):
            response = BatchTriggerResponse.model_validate(
                await self.client.transport.request("POST", "/api/v1/runs/batch", body=body)
            )
            handles += [RunHandle(self, ref.run_id) for ref in response.runs]
        return handles

    async def aio_run_many(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Out | TaskFailed]:
        """Run many, in one request; results in the order of `inputs`. The first failure is
        raised, unless `return_exceptions` puts each TaskFailed in its place instead."""
        durable = current_durable.get()
        if durable is not None:  # a durable task's children: spawned once, results logged
            outcomes = child_results(self, await durable.run_children(self, list(inputs)))
            failures = [r for r in outcomes if isinstance(r, TaskFailed)]
            if failures and not return_exceptions:
                raise failures[0]
            return outcomes
        handles = await self.aio_run_many_no_wait(inputs, metadata=metadata, priority=priority)
        views = await wait_for_runs(self.client, [h.run_id for h in handles], timeout)
        results: list[Out | TaskFailed] = []
        for handle in handles:
            view = views[handle.run_id]
            try:
                results.append(self._outcome(view))
            except TaskFailed as failure:
                if not return_exceptions:
                    raise
                results.append(failure)
        return results

    def _outcome(self, view: RunView) -> Out:
        if view.status is RunStatus.SUCCEEDED:
            return self.decode_output(view.output)
        raise TaskFailed(view.run_id, view.task, view.status, view.error)

    # -- synchronous variants ----------------------------------------------------------------------

    def run(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Out:
        """Trigger a run and wait for its output (raises TaskFailed if it does not succeed)."""
        return run_sync(
            self.aio_run(
                input,
                metadata=metadata,
                priority=priority,
                idempotency_key=idempotency_key,
                timeout=timeout,
            )
        )

    def run_no_wait(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle[Out]:
        """Trigger a run; returns a handle whose `.result()` waits for it."""
        return run_sync(
            self.aio_run_no_wait(
                input, metadata=metadata, priority=priority, idempotency_key=idempotency_key
            )
        )

    def run_many(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Out | TaskFailed]:
        return run_sync(
            self.aio_run_many(
                inputs,
                metadata=metadata,
                priority=priority,
                timeout=timeout,
                return_exceptions=return_exceptions,
            )
        )

    def run_many_no_wait(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        return run_sync(self.aio_run_many_no_wait(inputs, metadata=metadata, priority=priority))


class Runnable(Protocol[OutCo]):
    """What a run handle needs of what was run: a task, or a workflow."""

    client: Taskyard
    name: str

    def _outcome(self, view: RunView) -> OutCo: ...


class RunHandle(Generic[Out]):
    """A triggered run (of a task or a workflow). `result()` waits for its output."""

    def __init__(self, task: Runnable[Out], run_id: UUID) -> None:
        self.task = task
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.task.name} {self.run_id}>"

    async def aio_result(self, timeout: float | None = None) -> Out:
        views = await wait_for_runs(self.task.client, [self.run_id], timeout)
        return self.task._outcome(views[self.run_id])

    def result(self, timeout: float | None = None) -> Out:
        return run_sync(self.aio_result(timeout))

    async def aio_get(self) -> RunView:
        return await self.task.client.runs.aio_get(self.run_id)

    async def aio_stream(self) -> AsyncIterator[Any]:
        """The chunks the task streams with `ctx.stream(...)`, live, until the run ends."""
        async for chunk in self.task.client.transport.events(f"/api/v1/runs/{self.run_id}/stream"):
            yield chunk

    def get(self) -> RunView:
        return run_sync(self.aio_get())

    async def aio_cancel(self) -> RunStatus:
        return await self.task.client.runs.aio_cancel(self.run_id)

    def cancel(self) -> RunStatus:
        return run_sync(self.aio_cancel())


async def wait_for_runs(
    client: Taskyard, run_ids: list[UUID], timeout: float | None
) -> dict[UUID, RunView]:
    """Long-poll until every run has finished; raises ResultTimeout after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: dict[UUID, RunView] = {}
    pending = list(run_ids)
    while pending:
        remaining = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
        if remaining <= 0:
            raise ResultTimeout(
                f"{len(pending)} of {len(run_ids)} runs did not finish within "
                f"{timeout:g}s (first pending: {pending[0]})"
            )
        chunks = [pending[i : i + _WAIT_CHUNK] for i in range(0, len(pending), _WAIT_CHUNK)]
        responses = await asyncio.gather(
            *(
                client.transport.request(
                    "POST",
                    "/api/v1/runs/wait",
                    json_body={"run_ids": [str(r) for r in chunk], "timeout": remaining},
                    idempotent=True,
                )
                for chunk in chunks
            )
        )
        pending = []
        for raw in responses:
            response = WaitResponse.model_validate(raw)
            finished.update((view.run_id, view) for view in response.runs)
            pending += response.pending
    return finished


TaskFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]
