"""Workflows: their steps, conditions, definitions and triggers, and a step's context."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, field_validator

from taskyard_sdk.models._base import (
    EVENT_MATCH_PATTERN,
    MAX_PRIORITY,
    MAX_SECONDS,
    MIN_PRIORITY,
    NAME_PATTERN,
    STEP_PATTERN,
    _Strict,
)
from taskyard_sdk.models.options import Concurrency, Sticky, TaskOptions
from taskyard_sdk.models.runs import ErrorInfo


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
