"""The REST API's request and response models, shared by the SDK and the engine."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskyard_sdk._durations import parse_duration

MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 1, 2, 4
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
STEP_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"  # no ':', which joins workflow and step in task names
EVENT_KEY_PATTERN = r"^[A-Za-z0-9_.:/\-]{1,200}$"
EVENT_MATCH_PATTERN = r"^[A-Za-z0-9_.:/\-]{0,200}\*?$"  # an exact key, or a prefix ending in *


class RunStatus(StrEnum):
    PENDING = "pending"  # a workflow step waiting for its wait_for conditions
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # a workflow step that skip_if (or its skipped parents) skipped

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED,
                       RunStatus.TIMED_OUT, RunStatus.SKIPPED})


class RunKind(StrEnum):
    TASK = "task"
    WORKFLOW = "workflow"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskOptions(_Strict):
    """How the engine runs a task. Durations are in seconds (the SDK accepts "30s", "5m", ...).
    Immutable and hashable, so identical options are shared by every run that has them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retries: int = Field(default=0, ge=0, le=1000, description="Retries after the first attempt.")
    backoff_factor: float | None = Field(
        default=None, ge=1.0, le=100.0,
        description="Retry n waits min(backoff_factor ** n, backoff_max_seconds); None retries "
                    "at once.")
    backoff_max_seconds: float = Field(default=3600.0, gt=0)
    execution_timeout: float = Field(default=60.0, gt=0,
                                     description="Longest an attempt may run.")
    schedule_timeout: float = Field(default=300.0, gt=0,
                                    description="Longest a run may wait in the queue to start.")
    priority: int = Field(default=DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    queue: str = Field(default="default", pattern=NAME_PATTERN)

    @field_validator("execution_timeout", "schedule_timeout", "backoff_max_seconds",
                     mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class TriggerRequest(_Strict):
    task: str = Field(pattern=NAME_PATTERN)
    input: Any = None
    options: TaskOptions | None = Field(
        default=None, description="Overrides the registered definition's options.")
    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    metadata: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=500)
    parent_run_id: UUID | None = Field(
        default=None, description="The run that spawns this one (cancelling it cancels this).")


class BatchTriggerRequest(_Strict):
    runs: list[TriggerRequest] = Field(min_length=1, max_length=10_000)


class RunRef(BaseModel):
    run_id: UUID
    task: str
    status: RunStatus
    created: bool = Field(description="False when an idempotency key matched an existing run.")


class BatchTriggerResponse(BaseModel):
    runs: list[RunRef]


class ErrorInfo(BaseModel):
    type: str
    message: str
    traceback: str | None = None


class Attempt(BaseModel):
    attempt: int
    status: RunStatus
    worker_id: UUID | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorInfo | None = None


class RunSummary(BaseModel):
    run_id: UUID
    kind: RunKind = RunKind.TASK
    task: str = Field(description="The task, or for a workflow run the workflow's name.")
    step: str | None = Field(default=None, description="For a workflow's step: its name.")
    queue: str
    status: RunStatus
    attempt: int
    priority: int
    metadata: dict[str, str]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunView(RunSummary):
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    idempotency_key: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    waiting_reason: str | None = Field(
        default=None, description="Why a queued run has not started, when the engine knows.")
    workflow_run_id: UUID | None = Field(default=None, description="For a step: its workflow run.")
    workflow_version: int | None = None
    parent_run_id: UUID | None = Field(default=None, description="The run that spawned this one.")
    children: list[UUID] = Field(default_factory=list, description="Runs this run spawned.")
    steps: list[RunSummary] = Field(
        default_factory=list, description="For a workflow run: the steps decided so far.")


class RunPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = None


class WaitRequest(_Strict):
    run_ids: list[UUID] = Field(min_length=1, max_length=10_000)
    timeout: float = Field(default=30.0, ge=0, le=300)


class WaitResponse(BaseModel):
    runs: list[RunView] = Field(description="Runs that are finished.")
    pending: list[UUID] = Field(description="Runs still unfinished when the wait ended.")


class RunEvent(BaseModel):
    at: datetime
    attempt: int
    type: str
    worker_id: UUID | None = None
    detail: dict[str, Any] | None = None


class LogLine(BaseModel):
    at: datetime
    attempt: int
    level: str
    message: str


# -- workflows -------------------------------------------------------------------------------------


class SleepCondition(_Strict):
    """Holds once `seconds` have passed since the step began waiting."""

    type: Literal["sleep"] = "sleep"
    seconds: float = Field(gt=0)


class EventCondition(_Strict):
    """Holds once an event with this key (pushed since the workflow run started) matches the
    optional CEL filter over `payload`, `metadata` and the run's `input`."""

    type: Literal["event"] = "event"
    key: str = Field(pattern=EVENT_MATCH_PATTERN)
    filter: str | None = Field(default=None, max_length=10_000)


class AnyOf(_Strict):
    type: Literal["or"] = "or"
    conditions: list[Condition] = Field(min_length=1)


class AllOf(_Strict):
    type: Literal["and"] = "and"
    conditions: list[Condition] = Field(min_length=1)


Condition = Annotated[SleepCondition | EventCondition | AnyOf | AllOf,
                      Field(discriminator="type")]


class StepDefinition(_Strict):
    name: str = Field(pattern=STEP_PATTERN)
    parents: list[str] = Field(default_factory=list)
    options: TaskOptions = Field(default_factory=TaskOptions)
    skip_if: str | None = Field(default=None, max_length=10_000,
                                description="CEL over `input` and `parents`: skip when true.")
    cancel_if: str | None = Field(default=None, max_length=10_000,
                                  description="CEL over `input` and `parents`: cancel when true.")
    wait_for: list[Condition] = Field(
        default_factory=list, description="All must hold before the step is queued.")


class WorkflowDefinition(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    on_events: list[str] = Field(default_factory=list, max_length=100)
    event_filter: str | None = Field(
        default=None, max_length=10_000,
        description="CEL over `payload`, `metadata` and `key`: only matching events trigger.")
    steps: list[StepDefinition] = Field(min_length=1, max_length=10_000)
    on_failure: StepDefinition | None = Field(
        default=None, description="Runs once when any step has failed for good.")

    @field_validator("on_events")
    @classmethod
    def _event_patterns(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not re.fullmatch(EVENT_MATCH_PATTERN, key) or key in ("", "*"):
                raise ValueError(f"{key!r} is not an event key or a prefix ending in '*'")
        return keys


class WorkflowInfo(BaseModel):
    name: str
    version: int
    created: bool = Field(description="False when this exact definition was registered before.")
    created_at: datetime
    definition: WorkflowDefinition


class WorkflowList(BaseModel):
    workflows: list[WorkflowInfo]


class WorkflowTriggerRequest(_Strict):
    input: Any = None
    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    metadata: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=500)
    parent_run_id: UUID | None = None


class BatchWorkflowTriggerRequest(_Strict):
    runs: list[WorkflowTriggerRequest] = Field(min_length=1, max_length=10_000)


class StepContext(BaseModel):
    """What a workflow step receives besides the input."""

    workflow_run_id: UUID
    step: str
    parents: dict[str, Any] = Field(default_factory=dict,
                                    description="Outputs of the parents that succeeded.")
    skipped: list[str] = Field(default_factory=list, description="Parents that were skipped.")
    failures: dict[str, ErrorInfo] = Field(
        default_factory=dict, description="For the on_failure step: the steps that failed.")


# -- events ----------------------------------------------------------------------------------------


class EventRequest(_Strict):
    key: str = Field(pattern=EVENT_KEY_PATTERN)
    payload: Any = None
    metadata: dict[str, str] = Field(default_factory=dict)


class BatchEventRequest(_Strict):
    events: list[EventRequest] = Field(min_length=1, max_length=10_000)


class EventView(BaseModel):
    event_id: UUID
    key: str
    payload: Any = None
    metadata: dict[str, str]
    created_at: datetime
    triggered: list[UUID] = Field(description="Workflow runs this event started (may be none).")
    replay_of: UUID | None = None


class BatchEventResponse(BaseModel):
    events: list[EventView]


class EventPage(BaseModel):
    events: list[EventView]
    next_cursor: str | None = None
