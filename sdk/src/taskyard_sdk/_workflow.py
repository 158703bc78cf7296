"""Workflows: DAGs of steps whose tasks receive their parents' outputs.

signup = ty.workflow("post-signup", input=Signup, on_events=["user:create"])

@signup.task()
async def create_account(user: Signup, ctx: Context) -> Account: ...

@signup.task(parents=[create_account], skip_if="input.newsletter == false")
async def subscribe(user: Signup, ctx: Context) -> None:
    account = ctx.parent_output(create_account)

outputs = signup.run(Signup(...))  # {"create_account": Account(...), "subscribe": None}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from taskyard_sdk import outbox, protocol
from taskyard_sdk._arguments import strings
from taskyard_sdk._context import current_run
from taskyard_sdk._errors import InvalidInput, NotFound, TaskFailed
from taskyard_sdk._runnable import RunHandle, Runnable
from taskyard_sdk._schedules import Schedulable
from taskyard_sdk._task import (
    Task,
    TaskSettings,
    batch_bodies,
    build_options,
)
from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import (
    BatchTriggerResponse,
    Concurrency,
    Condition,
    RunRef,
    RunStatus,
    RunView,
    StepDefinition,
    Sticky,
    WorkflowDefinition,
    WorkflowInfo,
    WorkflowTriggerRequest,
)
from taskyard_sdk.otel import trigger_span, with_trace

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard

In = TypeVar("In")
Out = TypeVar("Out")
Outputs = dict[str, Any]


class WorkflowTask(Task[In, Out]):
    """A step of a workflow: a task that runs when its parents have ended, as part of a run of
    its workflow (it cannot be triggered alone)."""

    def __init__(
        self,
        workflow: Workflow[In],
        fn: Callable[..., Any],
        step: str,
        *,
        parents: Sequence[WorkflowTask[Any, Any] | str],
        skip_if: str | None,
        cancel_if: str | None,
        wait_for: Sequence[Condition],
        options: Any,
    ) -> None:
        self.workflow = workflow
        self.step = step
        super().__init__(
            workflow.client,
            fn,
            f"{workflow.name}:{step}",
            options,
            default_input=workflow.input_type,
        )
        self.parents = tuple(workflow.step_named(parent, f"step {step!r}") for parent in parents)
        self.skip_if = skip_if
        self.cancel_if = cancel_if
        self.wait_for = list(wait_for)

    def __repr__(self) -> str:
        return f"<WorkflowTask {self.workflow.name}.{self.step}>"

    def definition(self) -> StepDefinition:
        return StepDefinition(
            name=self.step,
            parents=[p.step for p in self.parents],
            options=self.options,
            skip_if=self.skip_if,
            cancel_if=self.cancel_if,
            wait_for=self.wait_for,
        )

    async def aio_run_no_wait(self, input: In, **_: Any) -> RunHandle[Out]:
        raise TypeError(
            f"step {self.step!r} runs as part of workflow {self.workflow.name!r}: "
            f"run the workflow instead"
        )

    async def aio_run_many_no_wait(self, inputs: Sequence[In], **_: Any) -> list[RunHandle[Out]]:
        raise TypeError(
            f"step {self.step!r} runs as part of workflow {self.workflow.name!r}: "
            f"run the workflow instead"
        )

    def _schedule_target(self) -> dict[str, str]:
        raise TypeError(
            f"step {self.step!r} runs as part of workflow {self.workflow.name!r}: "
            f"schedule the workflow instead"
        )

    def _outbox_rows(self, inputs: Sequence[In], *_: Any) -> list[outbox.OutboxRow]:
        raise TypeError(
            f"step {self.step!r} runs as part of workflow {self.workflow.name!r}: "
            f"run the workflow instead"
        )


class Workflow(Schedulable, Runnable[In, Outputs]):
    """A DAG of steps, created with `ty.workflow(...)`; steps are added with `@wf.task(...)`."""

    _outbox_kind = "workflow"
    _trigger_model = WorkflowTriggerRequest

    def __init__(
        self,
        client: Taskyard,
        name: str,
        *,
        input: Any = Any,
        on_events: str | Sequence[str] = (),
        event_filter: str | None = None,
        sticky: Sticky | None = None,
        concurrency: Sequence[Concurrency] = (),
        on_crons: str | Sequence[str] = (),
    ) -> None:
        self.client = client
        self.name = name
        self.input_type = input
        self.on_events = strings(on_events, f"workflow {name!r}: on_events")
        self.event_filter = event_filter
        self.sticky = sticky
        self.concurrency = list(concurrency)
        self.on_crons = strings(on_crons, f"workflow {name!r}: on_crons")
        self.steps: dict[str, WorkflowTask[In, Any]] = {}
        self.on_failure: WorkflowTask[In, Any] | None = None
        self._input = TypeAdapter(input)

    def __repr__(self) -> str:
        return f"<Workflow {self.name} ({len(self.steps)} steps)>"

    @property
    def tasks(self) -> list[WorkflowTask[In, Any]]:
        """Every step's task (the on_failure step included): what a worker must run."""
        return [*self.steps.values(), *([self.on_failure] if self.on_failure else [])]

    def step_named(self, step: WorkflowTask[Any, Any] | str, where: str) -> WorkflowTask[In, Any]:
        """A step of this workflow, given as itself or by name (declared before `where`)."""
        if isinstance(step, str):
            found = self.steps.get(step)
            if found is None:
                known = ", ".join(map(repr, self.steps)) or "none yet"
                raise ValueError(
                    f"{where}: workflow {self.name!r} has no step {step!r} declared "
                    f"before it (its steps: {known})"
                )
            return found
        if not isinstance(step, WorkflowTask) or step.workflow is not self:
            raise ValueError(f"{where}: parent {step!r} is not a step of workflow {self.name!r}")
        return step

    def task(
        self,
        *,
        name: str | None = None,
        parents: Sequence[WorkflowTask[Any, Any] | str] = (),
        skip_if: str | None = None,
        cancel_if: str | None = None,
        wait_for: Sequence[Condition] = (),
        **settings: Unpack[TaskSettings],
    ) -> Callable[[Callable[..., Any]], WorkflowTask[In, Any]]:
        """Add a step: `(input, ctx) -> output`, async or sync, with every option a task has
        (`ty.task`'s: retries, timeouts, priority, concurrency, rate_limits, labels, ...).

        parents: steps whose outputs it needs (`ctx.parent_output(parent)`). skip_if /
        cancel_if: CEL over `input` and `parents` (outputs by step name). wait_for: conditions
        (Sleep, Event, Or, And) that must all hold before it is queued.
        """
        options = build_options(settings)

        def decorate(fn: Callable[..., Any]) -> WorkflowTask[In, Any]:
            step = name or fn.__name__
            if step in self.steps or (self.on_failure and self.on_failure.step == step):
                raise ValueError(f"workflow {self.name!r} already has a step {step!r}")
            self.steps[step] = WorkflowTask(
                self,
                fn,
                step,
                parents=parents,
                skip_if=skip_if,
                cancel_if=cancel_if,
                wait_for=wait_for,
                options=options,
            )
            return self.steps[step]

        return decorate

    def on_failure_task(
        self,
        *,
        name: str | None = None,
        **settings: Unpack[TaskSettings],
    ) -> Callable[[Callable[..., Any]], WorkflowTask[In, Any]]:
        """The step that runs once when any step has failed for good; `ctx.failures` holds the
        failed steps' errors. It takes every task option."""
        options = build_options(settings)

        def decorate(fn: Callable[..., Any]) -> WorkflowTask[In, Any]:
            step = name or fn.__name__
            if step in self.steps:
                raise ValueError(f"workflow {self.name!r} already has a step {step!r}")
            self.on_failure = WorkflowTask(
                self,
                fn,
                step,
                parents=(),
                skip_if=None,
                cancel_if=None,
                wait_for=(),
                options=options,
            )
            return self.on_failure

        return decorate

    def _schedule_target(self) -> dict[str, str]:
        return {"workflow": self.name}

    def definition(self) -> WorkflowDefinition:
        return WorkflowDefinition(
            name=self.name,
            on_events=self.on_events,
            event_filter=self.event_filter,
            steps=[step.definition() for step in self.steps.values()],
            on_failure=self.on_failure.definition() if self.on_failure else None,
            sticky=self.sticky,
            concurrency=self.concurrency,
            on_crons=self.on_crons,
        )

    # -- registering and running -----------------------------------------------------------------

    async def aio_register(self) -> WorkflowInfo:
        """Register this definition (workers do it when they start). A changed definition
        becomes a new version; runs in flight keep theirs. Registering the same definition
        again changes nothing, so a call lost in flight is sent again."""
        data = await self.client.transport.request(
            "POST",
            "/api/v1/workflows",
            json_body=self.definition().model_dump(mode="json"),
            idempotent=True,
        )
        return WorkflowInfo.model_validate(data)

    def register(self) -> WorkflowInfo:
        return run_sync(self.aio_register())

    def _trigger(
        self,
        input: In,
        metadata: dict[str, str] | None,
        priority: int | None,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        request = self._request(metadata, priority, idempotency_key)
        request["input"] = self.encode_input(input)
        return request

    def encode_input(self, value: Any) -> Any:
        try:
            return to_jsonable_python(self._input.validate_python(value))
        except ValidationError as exc:
            raise InvalidInput(f"input for workflow {self.name!r} is invalid: {exc}") from None

    def _request(
        self, metadata: dict[str, str] | None, priority: int | None, idempotency_key: str | None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {}
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

    async def aio_run_no_wait(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle[Outputs]:
        with trigger_span(self.name, 1):
            ref = RunRef.model_validate(
                await self._post(
                    f"/api/v1/workflows/{self.name}/runs",
                    json_body=self._trigger(input, with_trace(metadata), priority, idempotency_key),
                    idempotent=idempotency_key is not None,
                )
            )
        return RunHandle(self, ref.run_id)

    async def _post(self, path: str, **body: Any) -> Any:
        """A trigger; one the engine refuses because no worker registered the workflow yet
        registers this definition and goes again, so the order in which processes start does
        not matter."""
        try:
            return await self.client.transport.request("POST", path, **body)
        except NotFound as exc:
            if exc.code != protocol.WORKFLOW_NOT_REGISTERED or not self.steps:
                raise  # another 404, or nothing to register (no step declared here)
        await self.aio_register()
        return await self.client.transport.request("POST", path, **body)

    async def aio_run_many_no_wait(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Outputs]]:
        handles: list[RunHandle[Outputs]] = []
        with trigger_span(self.name, len(inputs)):
            metadata = with_trace(metadata)
            runs = (self._trigger(value, metadata, priority, None) for value in inputs)
            for body in batch_bodies(runs):
                response = BatchTriggerResponse.model_validate(
                    await self._post(f"/api/v1/workflows/{self.name}/runs/batch", body=body)
                )
                handles += [RunHandle(self, ref.run_id) for ref in response.runs]
        return handles

    def _outcome(self, view: RunView) -> Outputs:
        if view.status is not RunStatus.SUCCEEDED:
            raise TaskFailed(view.run_id, view.task, view.status, view.error)
        outputs = view.output or {}
        return {
            name: step.decode_output(outputs[name]) if name in outputs else None
            for name, step in self.steps.items()
        }
