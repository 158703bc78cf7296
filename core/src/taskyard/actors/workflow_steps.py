"""A workflow step's run as its TenantActor creates it: the row written when the step is decided,
and the in-memory run its QueueActor gets once that row has committed."""

from __future__ import annotations

import uuid

import orjson

from taskyard.domain.dag import Create, WorkflowRun
from taskyard.domain.expressions import ExpressionError
from taskyard.domain.flow import Flow, flow_for
from taskyard.domain.runs import Run, options_json
from taskyard.domain.workflows import CompiledStep
from taskyard.store.rows import Row, new_run_row
from taskyard_sdk.models import RunStatus, TaskOptions


class StepRuns:
    """Builds a tenant's step rows and runs; keeps each options' JSON, shared by many steps."""

    def __init__(self, tenant_id: uuid.UUID) -> None:
        self.tenant_id = tenant_id
        self._options_json: dict[TaskOptions, str] = {}

    def row(self, run: WorkflowRun, create: Create, now: float) -> Row:
        step, state = create.step, create.state
        return new_run_row(
            tenant_id=self.tenant_id,
            run_id=state.run_id,
            task=step.task,
            queue=step.options.queue,
            status=state.status.value,
            priority=run.priority or step.options.priority,
            options_json=self.options(step.options),
            input_json=run.input_json.decode(),
            metadata_json=orjson.dumps(run.metadata).decode(),
            created_at=now,
            workflow_run_id=run.run_id,
            step=step.name,
            context_json=create.context_json.decode() if create.context_json else None,
            wait_started_at=state.wait_started_at,
            error_json=state.error_json.decode() if state.error_json else None,
            finished_at=now if state.status.terminal else None,
            flow_json=flow.to_json() if (flow := self.flow(run, step)) is not None else None,
        )

    def run(
        self,
        run: WorkflowRun,
        step: CompiledStep,
        run_id: uuid.UUID,
        context_json: bytes | None,
        now: float,
    ) -> Run:
        return Run(
            tenant_id=self.tenant_id,
            run_id=run_id,
            task=step.task,
            queue=step.options.queue,
            status=RunStatus.QUEUED,
            attempt=1,
            priority=run.priority or step.options.priority,
            options=step.options,
            created_at=now,
            queued_at=now,
            metadata=run.metadata,
            input_json=run.input_json if context_json is not None else None,
            workflow_run_id=run.run_id,
            step=step.name,
            context_json=context_json,
            flow=self.flow(run, step),
        )

    def flow(self, run: WorkflowRun, step: CompiledStep) -> Flow | None:
        """The step's flow facts; one that cannot be worked out fails the step when queued."""
        sticky = run.sticky_worker if step.options.sticky is not None else None
        try:
            return flow_for(step.options, run.input, run.metadata, sticky)
        except ExpressionError as exc:
            return Flow(error=f"step {step.name!r}: {exc}")

    def options(self, options: TaskOptions) -> str:
        text = self._options_json.get(options)
        if text is None:
            text = self._options_json[options] = options_json(options)
        return text
