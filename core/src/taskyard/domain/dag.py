"""How a workflow run progresses: the rules, as pure decisions over the run's state.

The TenantActor owns every unfinished workflow run as a `WorkflowRun` and applies what `advance`
decides (create step rows, release waiting steps, finish the run). `advance` only looks at the
state, so after a crash the state rebuilt from Postgres yields the same decisions, and a step
that already has a row is never decided again.

Rules (docs/workflows.md):
- A step is decided once all its parents have ended.
- A parent that failed, timed out or was cancelled cancels the step (and so its descendants).
- A step whose parents were all skipped is skipped too; a step with at least one parent that ran
  runs, and sees the skipped ones in `ctx.was_skipped(...)`.
- Then `skip_if`, then `cancel_if` (CEL over `input` and `parents`); an expression that cannot
  be evaluated fails the step. Then `wait_for`: the step waits (status pending) until its
  conditions hold. Events pushed since the workflow run started count, so an event that came
  before the step began waiting still releases it.
- When every step has ended the run ends: failed if a step failed or timed out (after the
  on_failure step, if any, has run), cancelled if a step was cancelled, else succeeded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from taskyard.domain.expressions import ExpressionError, holds
from taskyard.domain.runs import error_json
from taskyard.domain.workflows import CompiledStep, CompiledWorkflow
from taskyard.domain.workflows import holds as conditions_hold
from taskyard.ids import id_at_time_of
from taskyard_sdk.models import RunStatus

FAILED_FOR_GOOD = (RunStatus.FAILED, RunStatus.TIMED_OUT)
STOPPED = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED)


@dataclass(slots=True)
class StepState:
    run_id: uuid.UUID
    status: RunStatus
    output_json: bytes | None = None
    error_json: bytes | None = None
    wait_started_at: float | None = None
    matched: set[int] = field(default_factory=set)  # event leaves of wait_for that hold
    waiting: bool = False  # its row is committed and it is listening for events and sleeps
    context_json: bytes | None = None  # kept while pending, for when it is queued


@dataclass(slots=True)
class Create:
    """Insert the step's row with this status."""

    step: CompiledStep
    state: StepState
    context_json: bytes | None


@dataclass(slots=True)
class Release:
    """A pending step's conditions hold: queue it."""

    step: CompiledStep
    state: StepState


@dataclass(slots=True)
class Finish:
    status: RunStatus
    output_json: bytes | None
    error_json: bytes | None


Decision = Create | Release | Finish


@dataclass(eq=False)
class WorkflowRun:
    run_id: uuid.UUID
    workflow: CompiledWorkflow
    input_json: bytes
    metadata: dict[str, str]
    priority: int | None  # given at trigger: overrides the steps' own
    created_at: float
    steps: dict[str, StepState] = field(default_factory=dict)
    finished: bool = False
    sticky_worker: uuid.UUID | None = None  # the worker of its first step that was assigned
    admitted: bool = True  # False while it waits for its workflow's concurrency keys
    _input: Any = None
    # Bookkeeping so one step's news costs little in a wide workflow:
    _undecided: list[str] = field(default_factory=list)  # steps without a row, in order
    _open: int = 0  # steps (on_failure aside) that have not ended
    _pending: set[str] = field(default_factory=set)  # steps waiting on their conditions

    def __post_init__(self) -> None:
        self._undecided = [name for name in self.workflow.steps if name not in self.steps]
        self._open = sum(
            1
            for name in self.workflow.steps
            if name not in self.steps or not self.steps[name].status.terminal
        )
        self._pending = {
            name for name, state in self.steps.items() if state.status is RunStatus.PENDING
        }

    @property
    def input(self) -> Any:
        if self._input is None:
            self._input = orjson.loads(self.input_json)
        return self._input

    def advance(self, now: float) -> list[Decision]:
        if self.finished or not self.admitted:
            return []
        decisions: list[Decision] = []
        if self._undecided:
            undecided = []
            for name in self._undecided:  # parents come before their children
                decision = self._decide(self.workflow.steps[name], now)
                if decision is None:
                    undecided.append(name)
                    continue
                self._add(name, decision.state)
                decisions.append(decision)
            self._undecided = undecided
        for name in list(self._pending):
            state = self.steps[name]
            step = self.workflow.step(name)
            assert step is not None
            if state.waiting and self.conditions_hold(step, state, now):
                state.status = RunStatus.QUEUED
                state.waiting = False
                self._pending.discard(name)
                decisions.append(Release(step, state))
        ending = self._ending()
        if ending is not None:
            decisions.append(ending)
            if isinstance(ending, Finish):
                self.finished = True
            else:
                self.steps[ending.step.name] = ending.state
        return decisions

    def _add(self, name: str, state: StepState) -> None:
        self.steps[name] = state
        if state.status.terminal:
            self._open -= 1
        elif state.status is RunStatus.PENDING:
            self._pending.add(name)

    def conditions_hold(self, step: CompiledStep, state: StepState, now: float) -> bool:
        assert step.wait_for is not None
        assert state.wait_started_at is not None
        return conditions_hold(
            step.wait_for, state.wait_started_at, dict(step.sleeps), state.matched, now
        )

    def _decide(self, step: CompiledStep, now: float) -> Create | None:
        parents = [self.steps.get(parent) for parent in step.parents]
        if any(p is None or not p.status.terminal for p in parents):
            return None
        for parent, state in zip(step.parents, parents, strict=True):
            assert state is not None
            if state.status in STOPPED:
                return self._create(
                    step,
                    RunStatus.CANCELLED,
                    error=error_json(
                        "ParentStopped", f"parent step {parent!r} {_verb(state.status)}"
                    ),
                )
        skipped = [p for p in step.parents if self.steps[p].status is RunStatus.SKIPPED]
        if step.parents and len(skipped) == len(step.parents):
            return self._create(
                step,
                RunStatus.SKIPPED,
                error=error_json("Skipped", "all of its parents were skipped"),
            )
        context = self._context(step, skipped)
        for rule, status in (
            (step.skip_if, RunStatus.SKIPPED),
            (step.cancel_if, RunStatus.CANCELLED),
        ):
            if rule is None:
                continue
            try:
                applies = holds(rule, {"input": self.input, "parents": self._parent_values(step)})
            except ExpressionError as exc:
                return self._create(
                    step,
                    RunStatus.FAILED,
                    error=error_json("ConditionError", f"step {step.name!r}: {exc}"),
                )
            if applies:
                kind = "skip_if" if status is RunStatus.SKIPPED else "cancel_if"
                return self._create(
                    step,
                    status,
                    error=error_json(
                        "Skipped" if status is RunStatus.SKIPPED else "Cancelled",
                        f"{kind} held: {rule}",
                    ),
                )
        if step.wait_for is not None:
            waiting = self._create(step, RunStatus.PENDING, context, wait_started_at=now)
            waiting.state.context_json = context
            return waiting
        return self._create(step, RunStatus.QUEUED, context)

    def _ending(self) -> Create | Finish | None:
        """The on_failure step, or the end of the run, once every step has ended."""
        steps = self.steps
        if self._open:
            return None
        failures = {
            name: steps[name]
            for name in self.workflow.steps
            if steps[name].status in FAILED_FOR_GOOD
        }
        handler = self.workflow.on_failure
        if failures and handler is not None:
            handled = steps.get(handler.name)
            if handled is None:
                return self._create(
                    handler,
                    RunStatus.QUEUED,
                    orjson.dumps(
                        {
                            "workflow_run_id": str(self.run_id),
                            "step": handler.name,
                            "failures": {
                                name: orjson.Fragment(state.error_json or b"null")
                                for name, state in failures.items()
                            },
                        }
                    ),
                )
            if not handled.status.terminal:
                return None
        output = orjson.dumps(
            {
                name: orjson.Fragment(state.output_json or b"null")
                for name, state in steps.items()
                if name in self.workflow.steps and state.status is RunStatus.SUCCEEDED
            }
        )
        if failures:
            name, state = next(iter(failures.items()))
            message = _error_message(state.error_json)
            return Finish(
                RunStatus.FAILED,
                output,
                error_json("StepFailed", f"step {name!r} {_verb(state.status)}: {message}"),
            )
        cancelled = [
            name for name in self.workflow.steps if steps[name].status is RunStatus.CANCELLED
        ]
        if cancelled:
            return Finish(
                RunStatus.CANCELLED,
                output,
                error_json(
                    "StepCancelled",
                    f"step {cancelled[0]!r} was cancelled: "
                    f"{_error_message(steps[cancelled[0]].error_json)}",
                ),
            )
        return Finish(RunStatus.SUCCEEDED, output, None)

    def _create(
        self,
        step: CompiledStep,
        status: RunStatus,
        context_json: bytes | None = None,
        *,
        error: bytes | None = None,
        wait_started_at: float | None = None,
    ) -> Create:
        return Create(
            step,
            StepState(
                id_at_time_of(self.run_id, step.name),
                status,
                error_json=error,
                wait_started_at=wait_started_at,
            ),
            context_json,
        )

    def _context(self, step: CompiledStep, skipped: list[str]) -> bytes:
        return orjson.dumps(
            {
                "workflow_run_id": str(self.run_id),
                "step": step.name,
                "parents": {
                    p: orjson.Fragment(self.steps[p].output_json or b"null")
                    for p in step.parents
                    if p not in skipped
                },
                "skipped": skipped,
            }
        )

    def _parent_values(self, step: CompiledStep) -> dict[str, Any]:
        return {p: orjson.loads(self.steps[p].output_json or b"null") for p in step.parents}

    def step_ended(
        self, name: str, status: RunStatus, output_json: bytes | None, error_json: bytes | None
    ) -> bool:
        """A step's run ended (reported by its queue). False if it is not a step of this run
        that was waiting for that news."""
        state = self.steps.get(name)
        if state is None or self.finished or state.status.terminal:
            return False
        if name in self.workflow.steps:
            self._open -= 1
        self._pending.discard(name)
        state.status = status
        state.output_json = output_json
        state.error_json = error_json
        state.waiting = False
        return True

    def cancel(self, reason: str) -> tuple[list[tuple[str, StepState]], Finish]:
        """Cancel the run: returns its steps that had not ended (their runs must be cancelled)
        and how the run finishes."""
        unfinished = [
            (name, state) for name, state in self.steps.items() if not state.status.terminal
        ]
        for _, state in unfinished:
            state.status = RunStatus.CANCELLED
            state.waiting = False
        self.finished = True
        self._pending.clear()
        output = orjson.dumps(
            {
                name: orjson.Fragment(state.output_json or b"null")
                for name, state in self.steps.items()
                if state.status is RunStatus.SUCCEEDED
            }
        )
        return unfinished, Finish(RunStatus.CANCELLED, output, error_json("Cancelled", reason))


def _verb(status: RunStatus) -> str:
    return {
        RunStatus.FAILED: "failed",
        RunStatus.TIMED_OUT: "timed out",
        RunStatus.CANCELLED: "was cancelled",
    }.get(status, str(status))


def _error_message(error: bytes | None) -> str:
    if not error:
        return "no error recorded"
    message = orjson.loads(error).get("message")
    return str(message)
