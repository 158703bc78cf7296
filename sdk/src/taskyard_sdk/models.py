"""The REST API's request and response models, shared by the SDK and the engine."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from taskyard_sdk._durations import parse_duration

MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 1, 2, 4
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
STEP_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"  # no ':', which joins workflow and step in task names
EVENT_KEY_PATTERN = r"^[A-Za-z0-9_.:/\-]{1,200}$"
EVENT_MATCH_PATTERN = r"^[A-Za-z0-9_.:/\-]{0,200}\*?$"  # an exact key, or a prefix ending in *
RATE_KEY_PATTERN = r"^[A-Za-z0-9_.:/@\-]{1,200}$"
# The longest any duration may be (100 years): the engine stores the times durations lead to,
# and one ages away is a time PostgreSQL refuses, failing the write that holds it.
MAX_SECONDS = 100 * 365 * 86_400

LabelValue = str | int | float | bool


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


_TERMINAL = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.TIMED_OUT,
        RunStatus.SKIPPED,
    }
)


class RunKind(StrEnum):
    TASK = "task"
    WORKFLOW = "workflow"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- flow control and routing ----------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConcurrencyStrategy(StrEnum):
    """What happens when a concurrency key already has `max_runs` runs."""

    GROUP_ROUND_ROBIN = "group_round_robin"
    """New runs wait; keys take turns, so a busy key cannot starve the others."""
    CANCEL_IN_PROGRESS = "cancel_in_progress"
    """A new run cancels the oldest run of its key (running or waiting) to make room."""
    CANCEL_NEWEST = "cancel_newest"
    """The new run is cancelled when its key already has `max_runs` runs (running or waiting)."""
    CANCEL_QUEUED_EXCEPT_NEWEST = "cancel_queued_except_newest"
    """Debounce: a new run cancels the runs of its key still waiting; running ones go on."""


class Concurrency(_Frozen):
    """At most `max_runs` runs of the task run at once for each value of `expression` (CEL over
    `input` and `metadata`, e.g. "input.user_id"); a constant ("'all'") is a global limit."""

    expression: str = Field(min_length=1, max_length=1000)
    max_runs: int = Field(default=1, ge=1, le=100_000)
    strategy: ConcurrencyStrategy = ConcurrencyStrategy.GROUP_ROUND_ROBIN


class RateDuration(StrEnum):
    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> float:
        return _RATE_SECONDS[self]


_RATE_SECONDS = {
    RateDuration.SECOND: 1.0,
    RateDuration.MINUTE: 60.0,
    RateDuration.HOUR: 3600.0,
    RateDuration.DAY: 86_400.0,
}


class RateLimit(_Frozen):
    """Each run of the task takes `units` from a rate limit when it starts; a run waits in the
    queue while its limit has too few units left in the current window.

    Either `key`, a limit set with `ty.rate_limits.put(key, limit=..., duration=...)`, or
    `dynamic_key`, CEL over `input` and `metadata` whose value names the bucket (one per user,
    say), with its own `limit` and `duration`. `units` is a count or CEL ("input.tokens").
    """

    key: str | None = Field(default=None, pattern=RATE_KEY_PATTERN)
    dynamic_key: str | None = Field(default=None, min_length=1, max_length=1000)
    units: int | str = Field(default=1, description="A count >= 1, or CEL giving one.")
    limit: int | None = Field(default=None, ge=1, le=1_000_000_000)
    duration: RateDuration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RateLimit:
        if (self.key is None) == (self.dynamic_key is None):
            raise ValueError(
                "give either key (a limit set with rate_limits.put) or dynamic_key "
                "(CEL naming a bucket per value), not both or neither"
            )
        if self.dynamic_key is not None and (self.limit is None or self.duration is None):
            raise ValueError(f"dynamic_key {self.dynamic_key!r} needs limit and duration")
        if self.key is not None and (self.limit is not None or self.duration is not None):
            raise ValueError(
                f"key {self.key!r} takes its limit from rate_limits.put; limit and "
                f"duration are for dynamic_key"
            )
        if isinstance(self.units, int) and not isinstance(self.units, bool) and self.units < 1:
            raise ValueError(f"units must be at least 1, not {self.units}")
        if isinstance(self.units, str) and not 1 <= len(self.units) <= 1000:
            raise ValueError("units as CEL must be 1 to 1000 characters")
        return self


class Label(_Frozen):
    """A label a task wants on its worker: `required` ones filter workers, the others rank them
    by `weight`. `comparator` compares the worker's value (left) with `value` (right)."""

    value: LabelValue
    required: bool = False
    comparator: Literal["=", "!=", ">", ">=", "<", "<="] = "="
    weight: int = Field(default=100, ge=0, le=1_000_000)

    def __init__(self, value: LabelValue | None = None, /, **fields: Any) -> None:
        if value is not None:
            fields["value"] = value
        super().__init__(**fields)


def _labels_in(value: Any) -> Any:
    """`{"gpu": Label("a100", required=True), "zone": "eu"}` -> sorted (name, Label) pairs."""
    if isinstance(value, dict):
        return tuple(
            sorted(
                (name, label if isinstance(label, Label | dict) else {"value": label})
                for name, label in value.items()
            )
        )
    return value


DesiredLabels = Annotated[
    tuple[tuple[str, Label], ...],
    # what is sent: a Label ({value, required, comparator, weight}) or a bare value per name
    BeforeValidator(_labels_in, json_schema_input_type=dict[str, Label | LabelValue]),
    PlainSerializer(dict, return_type=dict[str, Label]),
]


class Sticky(StrEnum):
    """For workflow steps: run on the worker that ran the workflow run's first step."""

    SOFT = "soft"
    """Prefer that worker; another takes the step when it has no free slot."""
    HARD = "hard"
    """Only that worker; the step waits for it (until its schedule_timeout)."""


class RateLimitRequest(_Strict):
    limit: int = Field(ge=1, le=1_000_000_000, description="Units per duration.")
    duration: RateDuration = RateDuration.MINUTE


class RateLimitView(BaseModel):
    key: str
    limit: int
    duration: RateDuration
    configured: bool = Field(description="Set with the API (else a dynamic key's bucket).")
    used: int = Field(description="Units taken in the current window.")
    available: int = Field(description="Units a run could take now.")


class RateLimitList(BaseModel):
    rate_limits: list[RateLimitView]


class QueueOrder(StrEnum):
    FIFO = "fifo"
    LIFO = "lifo"


class TaskOptions(_Strict):
    """How the engine runs a task. Durations are in seconds (the SDK accepts "30s", "5m", ...).
    Immutable and hashable, so identical options are shared by every run that has them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retries: int = Field(default=0, ge=0, le=1000, description="Retries after the first attempt.")
    backoff_factor: float | None = Field(
        default=None,
        ge=1.0,
        le=100.0,
        description="Retry n waits min(backoff_factor ** n, backoff_max_seconds); None retries "
        "at once.",
    )
    backoff_max_seconds: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    execution_timeout: float = Field(
        default=60.0, gt=0, le=MAX_SECONDS, description="Longest an attempt may run."
    )
    schedule_timeout: float = Field(
        default=300.0,
        gt=0,
        le=MAX_SECONDS,
        description="Longest a run may wait in the queue to start.",
    )
    priority: int = Field(default=DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    queue: str = Field(default="default", pattern=NAME_PATTERN)
    order: QueueOrder = Field(
        default=QueueOrder.FIFO, description="Within a priority: oldest first, or newest first."
    )
    concurrency: tuple[Concurrency, ...] = Field(default=(), max_length=4)
    rate_limits: tuple[RateLimit, ...] = Field(default=(), max_length=4)
    desired_worker_labels: DesiredLabels = ()
    sticky: Sticky | None = None
    durable: bool = Field(
        default=False,
        description="A durable task (`ty.durable_task`): its log survives retries and crashes.",
    )

    @field_validator("execution_timeout", "schedule_timeout", "backoff_max_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class TriggerRequest(_Strict):
    task: str = Field(pattern=NAME_PATTERN)
    input: Any = None
    options: TaskOptions | None = Field(
        default=None, description="Overrides the registered definition's options."
    )
    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    metadata: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=500)
    parent_run_id: UUID | None = Field(
        default=None, description="The run that spawns this one (cancelling it cancels this)."
    )


class BatchTriggerRequest(_Strict):
    runs: list[TriggerRequest] = Field(min_length=1, max_length=10_000)
    options: TaskOptions | None = Field(
        default=None,
        description="Options for every run of the batch that carries none of its "
        "own (sent once instead of with each run).",
    )


class RunRef(BaseModel):
    run_id: UUID
    task: str
    status: RunStatus
    created: bool = Field(description="False when an idempotency key matched an existing run.")
    idempotent_replay: bool = Field(
        default=False,
        description="True when an idempotency key matched an existing run: this "
        "is that run, and nothing new was triggered.",
    )
    input_differs: bool = Field(
        default=False,
        description="On a replay: the existing run was triggered with another "
        "input than this request's (the key was used for other work).",
    )


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
        default=None, description="Why a queued run has not started, when the engine knows."
    )
    workflow_run_id: UUID | None = Field(default=None, description="For a step: its workflow run.")
    workflow_version: int | None = None
    parent_run_id: UUID | None = Field(default=None, description="The run that spawned this one.")
    children: list[UUID] = Field(default_factory=list, description="Runs this run spawned.")
    steps: list[RunSummary] = Field(
        default_factory=list, description="For a workflow run: the steps decided so far."
    )


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


class LogPage(BaseModel):
    lines: list[LogLine]
    next_after: int | None = Field(
        description="Where this page ended: pass it as `after` for the lines that follow. None "
        "when the page is empty (ask again with the same `after`)."
    )


# -- workflows -------------------------------------------------------------------------------------


class SleepCondition(_Strict):
    """Holds once `seconds` have passed since the step began waiting."""

    type: Literal["sleep"] = "sleep"
    seconds: float = Field(gt=0, le=MAX_SECONDS)


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


Condition = Annotated[SleepCondition | EventCondition | AnyOf | AllOf, Field(discriminator="type")]


class StepDefinition(_Strict):
    name: str = Field(pattern=STEP_PATTERN)
    parents: list[str] = Field(default_factory=list)
    options: TaskOptions = Field(default_factory=TaskOptions)
    skip_if: str | None = Field(
        default=None,
        max_length=10_000,
        description="CEL over `input` and `parents`: skip when true.",
    )
    cancel_if: str | None = Field(
        default=None,
        max_length=10_000,
        description="CEL over `input` and `parents`: cancel when true.",
    )
    wait_for: list[Condition] = Field(
        default_factory=list, description="All must hold before the step is queued."
    )


class WorkflowDefinition(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    on_events: list[str] = Field(default_factory=list, max_length=100)
    event_filter: str | None = Field(
        default=None,
        max_length=10_000,
        description="CEL over `payload`, `metadata` and `key`: only matching events trigger.",
    )
    steps: list[StepDefinition] = Field(min_length=1, max_length=10_000)
    on_failure: StepDefinition | None = Field(
        default=None, description="Runs once when any step has failed for good."
    )
    on_crons: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Cron expressions (UTC) that start runs with input null, kept in sync with "
        "the code on every registration.",
    )
    sticky: Sticky | None = Field(
        default=None,
        description="Every step's sticky strategy, unless the step sets its own: "
        "run on the worker that ran the run's first step.",
    )
    concurrency: list[Concurrency] = Field(
        default_factory=list,
        max_length=4,
        description="Limits on runs of the workflow going at once, per key (CEL over the run's "
        "input and metadata); a run waits, queued, until it is admitted.",
    )

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
    parents: dict[str, Any] = Field(
        default_factory=dict, description="Outputs of the parents that succeeded."
    )
    skipped: list[str] = Field(default_factory=list, description="Parents that were skipped.")
    failures: dict[str, ErrorInfo] = Field(
        default_factory=dict, description="For the on_failure step: the steps that failed."
    )


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


# -- scheduling ------------------------------------------------------------------------------------


class CatchUp(StrEnum):
    """Which ticks a cron fires for the time the engine was down."""

    LATEST = "latest"
    """Only the latest missed tick (default)."""
    ALL = "all"
    """Every missed tick, oldest first (at most 100)."""


class _Target(_Strict):
    task: str | None = Field(default=None, pattern=NAME_PATTERN)
    workflow: str | None = Field(default=None, pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _one_target(self) -> _Target:
        if (self.task is None) == (self.workflow is None):
            raise ValueError("name either a task or a workflow to run")
        return self


class CronRequest(_Target):
    name: str = Field(pattern=NAME_PATTERN)
    expression: str = Field(
        min_length=1, max_length=200, description="5 fields, or 6 with seconds last."
    )
    timezone: str = Field(default="UTC", max_length=100)
    input: Any = None
    metadata: dict[str, str] = Field(default_factory=dict)
    catch_up: CatchUp = CatchUp.LATEST


class CronView(BaseModel):
    cron_id: UUID
    name: str
    task: str | None = None
    workflow: str | None = None
    expression: str
    timezone: str
    input: Any = None
    metadata: dict[str, str]
    catch_up: CatchUp
    paused: bool
    declared_in_code: bool = Field(
        description="From on_crons in code: kept in sync by registration, not by the API."
    )
    next_fire_at: datetime | None = None
    last_tick: datetime | None = None
    created_at: datetime


class CronList(BaseModel):
    crons: list[CronView]


class ScheduleRequest(_Target):
    at: datetime = Field(description="When to run it, with a time zone (UTC if none given).")
    input: Any = None
    metadata: dict[str, str] = Field(default_factory=dict)


class RescheduleRequest(_Strict):
    at: datetime


class ScheduleView(BaseModel):
    schedule_id: UUID
    task: str | None = None
    workflow: str | None = None
    at: datetime
    input: Any = None
    metadata: dict[str, str]
    run_id: UUID | None = Field(default=None, description="The run it started, once fired.")
    created_at: datetime


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


# -- alerts ----------------------------------------------------------------------------------------


AlertEvent = Literal["failed", "schedule_timeout"]


def _failed_only() -> list[AlertEvent]:
    return ["failed"]


class AlertRuleRequest(_Strict):
    channel: str = Field(
        min_length=1,
        max_length=100,
        description="An alert channel a loaded plugin provides: email, slack.",
    )
    target: dict[str, Any] = Field(
        default_factory=dict, description='Where the channel sends, e.g. {"to": [...]}.'
    )
    workflows: list[str] | None = Field(
        default=None,
        description="Only these workflows' failures; none given: every workflow and every task.",
    )
    tasks: list[str] | None = Field(default=None, description="Only these tasks' failures.")
    events: list[AlertEvent] = Field(
        default_factory=_failed_only,
        min_length=1,
        description="failed: a run failed (or timed out running) after its last retry; "
        "schedule_timeout: a run waited in the queue past its schedule_timeout.",
    )
    window: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="At most one alert per workflow (or task) per window, in "
        "seconds; the failures folded in are counted.",
    )

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class AlertRuleView(AlertRuleRequest):
    model_config = ConfigDict(extra="ignore")

    rule_id: UUID
    created_at: datetime


class AlertRuleList(BaseModel):
    rules: list[AlertRuleView]
