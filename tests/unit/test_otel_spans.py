"""The engine's spans of runs that ended (the `otel` plugin): a workflow run is the parent of its
steps' runs, a run joins its caller's trace, a run outside any trace starts its own, and the
worker's attempts can find their parent from the run id alone."""

from __future__ import annotations

import uuid

from opentelemetry.trace import StatusCode
from taskyard_otel import Tracing

from taskyard.plugins import RunEnded
from taskyard_sdk.otel import parse_traceparent, run_span_id, trace_id_of, traceparent

CALLER_TRACE, CALLER_SPAN = 0xABC, 0x123


def ended(run_id: uuid.UUID, **given: object) -> RunEnded:
    values: dict[str, object] = {
        "tenant_id": uuid.uuid4(),
        "run_id": run_id,
        "kind": "task",
        "task": "charge",
        "workflow": None,
        "workflow_run_id": None,
        "status": "succeeded",
        "attempt": 1,
        "error_type": None,
        "error_message": None,
        "metadata": {},
        "created_at": 100.0,
        "queued_at": 100.0,
        "started_at": 100.5,
        "finished_at": 101.0,
    }
    return RunEnded(**(values | given))  # type: ignore[arg-type]


def test_a_workflow_run_is_the_parent_of_its_steps() -> None:
    workflow_run = uuid.uuid4()
    carried = {"traceparent": traceparent(CALLER_TRACE, CALLER_SPAN)}
    tracing = Tracing()
    [workflow] = tracing.spans(
        ended(workflow_run, kind="workflow", task="order", workflow="order",
              workflow_run_id=workflow_run, metadata=carried, started_at=None)
    )  # fmt: skip
    step_run = uuid.uuid4()
    step, wait = tracing.spans(
        ended(step_run, task="order:ship", workflow="order", workflow_run_id=workflow_run,
              metadata=carried)
    )  # fmt: skip
    assert workflow.name == "taskyard.workflow order"
    assert workflow.parent is not None
    assert (workflow.parent.trace_id, workflow.parent.span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert workflow.context is not None
    assert workflow.context.span_id == run_span_id(workflow_run)
    assert step.parent is not None
    assert step.parent.span_id == workflow.context.span_id  # not the caller's: the workflow's
    assert step.context is not None
    assert step.context.trace_id == CALLER_TRACE
    assert wait.parent is not None
    assert wait.parent.span_id == step.context.span_id
    assert (wait.start_time, wait.end_time) == (100_000_000_000, 100_500_000_000)


def test_a_run_outside_any_trace_starts_its_own_and_a_failure_says_so() -> None:
    run_id = uuid.uuid4()
    [run, _] = Tracing().spans(
        ended(run_id, status="failed", error_type="ValueError", error_message="bad card")
    )
    assert run.parent is None
    assert run.context is not None
    assert run.context.trace_id == trace_id_of({}, run_id) == run_id.int
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "ValueError: bad card"


def test_traceparents_are_parsed_strictly() -> None:
    assert parse_traceparent(traceparent(CALLER_TRACE, CALLER_SPAN)) == (
        CALLER_TRACE,
        CALLER_SPAN,
        1,
    )
    for bad in (None, "", "01-abc", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"):
        assert parse_traceparent(bad) is None
