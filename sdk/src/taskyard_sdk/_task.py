"""Tasks: decorated functions that the engine runs on workers, and handles to their runs."""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar
from uuid import uuid4

from pydantic import PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import to_json, to_jsonable_python

from taskyard_sdk._arguments import strings
from taskyard_sdk._context import Context, current_run
from taskyard_sdk._durable import child_results, current_durable
from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk._errors import InvalidInput, TaskFailed
from taskyard_sdk._resources import task_parameters
from taskyard_sdk._runnable import RunHandle, Runnable
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
    TriggerRequest,
)
from taskyard_sdk.otel import trigger_span, with_trace

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard

In = TypeVar("In")
Out = TypeVar("Out")
OutCo = TypeVar("OutCo", covariant=True)

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
    slot_cost: int


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


class Task(Schedulable, Runnable[In, Out]):
    """A task function registered with a client. Call it directly to run it in-process (for
    tests); use `run` / `aio_run` to run it on a worker through the engine."""

    _outbox_kind = "task"
    _trigger_model = TriggerRequest

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
        self._options_set = options.model_dump(mode="json", exclude_defaults=True)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, input: In, ctx: Context, state: Any = None) -> Any:
        """The function on `input`, with the context if it takes one and its dependencies
        from `state` (a worker's lifespan state)."""
        filled = {d.parameter: d.resolve(state, self.name) for d in self.dependencies}
        return self.fn(input, ctx, **filled) if self._takes_context else self.fn(input, **filled)

    # -- input and output ------------------------------------------------------------------------

    @functools.cached_property
    def input_schema(self) -> dict[str, Any] | None:
        """The input's JSON Schema (None for an input of any shape, or a type that has none)."""
        if self.input_type is Any:
            return None
        try:
            return self._input.json_schema()
        except PydanticUserError:  # e.g. a bare class pydantic validates only by isinstance
            return None

    def encode_input(self, value: Any) -> Any:
        """Validate against the input model and turn into JSON-able data (before sending)."""
        try:
            validated = self._input.validate_python(value)
        except ValidationError as exc:
            raise InvalidInput(f"input for task {self.name!r} is invalid: {exc}") from None
        return to_jsonable_python(validated)

    def _schedule_target(self) -> dict[str, str]:
        return {"task": self.name}

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
        request = self._request(metadata, priority, idempotency_key, options=options)
        request["input"] = self.encode_input(input)
        return request

    def _outbox_request(
        self, metadata: dict[str, str] | None, priority: int | None
    ) -> dict[str, Any]:
        """Outbox rows carry only the options that differ from their defaults: every row stores
        its own, and a no-op task's full options are two thirds of its row."""
        request = self._request(metadata, priority, None, options=False)
        request["options"] = self._options_set
        return request

    def _request(
        self,
        metadata: dict[str, str] | None,
        priority: int | None,
        idempotency_key: str | None,
        *,
        options: bool = True,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"task": self.name}
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
        with trigger_span(self.name, 1):
            body = self._trigger(input, with_trace(metadata), priority, idempotency_key)
            ref = RunRef.model_validate(
                await self.client.transport.request(
                    "POST", "/api/v1/runs", json_body=body, idempotent=idempotency_key is not None
                )
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
        return await super().aio_run(
            input,
            metadata=metadata,
            priority=priority,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )

    async def aio_run_many_no_wait(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        handles: list[RunHandle[Out]] = []
        with trigger_span(self.name, len(inputs)):
            metadata = with_trace(metadata)
            runs = (
                self._trigger(value, metadata, priority, None, options=False) for value in inputs
            )
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
        durable = current_durable.get()
        if durable is not None:  # a durable task's children: spawned once, results logged
            outcomes = child_results(self, await durable.run_children(self, list(inputs)))
            failures = [r for r in outcomes if isinstance(r, TaskFailed)]
            if failures and not return_exceptions:
                raise failures[0]
            return outcomes
        return await super().aio_run_many(
            inputs,
            metadata=metadata,
            priority=priority,
            timeout=timeout,
            return_exceptions=return_exceptions,
        )

    def _outcome(self, view: RunView) -> Out:
        if view.status is RunStatus.SUCCEEDED:
            return self.decode_output(view.output)
        raise TaskFailed(view.run_id, view.task, view.status, view.error)


TaskFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]


class BatchTask(Task[In, Out]):
    """A batch task: triggered one input at a time, run with many. Its function takes a
    `list[In]` (in the order the runs were triggered) and returns either a `list` with one
    output per run, in the same order (when annotated `-> list[...]`, or unannotated and the
    list has one item per run), or one value every run of the batch gets (any other return)."""

    def __init__(self, client: Taskyard, fn: Callable[..., Any], name: str, options: TaskOptions):
        super().__init__(client, fn, name, options)
        batch_type = self.input_type
        if typing.get_origin(batch_type) is not list:
            raise TypeError(
                f"batch task {name!r} takes a list of inputs: annotate its first parameter "
                f"as list[...] (list[Any] for any inputs)"
            )
        [self.input_type] = typing.get_args(batch_type) or (Any,)
        self._input = TypeAdapter(self.input_type)
        self._inputs = TypeAdapter(batch_type)
        # One output per run when the function says it returns a list: each run gets its own.
        self.per_run = typing.get_origin(self.output_type) is list
        if self.per_run:
            [self.output_type] = typing.get_args(self.output_type) or (Any,)
            self._output = TypeAdapter(self.output_type)

    def decode_input(self, data: Any) -> Any:
        return self._inputs.validate_python(data)

    def split_outputs(self, output: Any, runs: int) -> list[Any]:
        """Each run's output, from what the function returned for `runs` runs."""
        unannotated = self.output_type is Any and not self.per_run
        if self.per_run or (unannotated and isinstance(output, list) and len(output) == runs):
            if not isinstance(output, list) or len(output) != runs:
                got = f"{len(output)} outputs" if isinstance(output, list) else repr(output)
                raise ValueError(
                    f"batch task {self.name!r} returned {got} for a batch of {runs} runs: "
                    f"return one output per input, in order (or annotate another return type "
                    f"to give every run the same value)"
                )
            return output
        return [output] * runs

    async def aio_mock_run(self, input: In, **_: Any) -> Out:
        raise TypeError(
            f"batch task {self.name!r} runs on lists: test it by calling its function, "
            f"{self.name}.fn([...]), or on a worker (the taskyard_client fixture)"
        )
