"""Triggering runs and reading them back: runs, attempts, events of a run, logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

from taskyard_sdk.models._base import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    NAME_PATTERN,
    RunKind,
    RunStatus,
    _Strict,
)
from taskyard_sdk.models.options import TaskOptions


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


class DurableEntry(BaseModel):
    """One entry of a durable run's log: a memoised step, a child spawned, or a wait."""

    position: int
    kind: Literal["memo", "spawn", "wait"]
    call: str = Field(description="What the task's code called, e.g. `sleep` or a step's name.")
    done: bool = Field(description="False for the wait the run is suspended in now.")
    result: Any = Field(description="What a replay returns for it (None until done).")
    wait: Any = Field(default=None, description="A wait's spec: what it waits for.")
    created_at: datetime
    finished_at: datetime | None


class LogPage(BaseModel):
    lines: list[LogLine]
    next_after: int | None = Field(
        description="Where this page ended: pass it as `after` for the lines that follow. None "
        "when the page is empty (ask again with the same `after`)."
    )


MAX_BULK = 10_000  # runs one bulk call changes at most


class RunFilter(_Strict):
    """Which runs: those that match every field given (an empty filter matches every run)."""

    status: list[RunStatus] = Field(default_factory=list)
    task: list[str] = Field(default_factory=list, description="Tasks or workflows.")
    since: datetime | None = Field(default=None, description="Created at or after.")
    until: datetime | None = Field(default=None, description="Created at or before.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Pairs runs must carry.")


class BulkRequest(_Strict):
    """Runs named by id, or every run a filter matches (one of the two)."""

    run_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=MAX_BULK)
    filter: RunFilter | None = None

    @model_validator(mode="after")
    def _one_of(self) -> BulkRequest:
        if (self.run_ids is None) == (self.filter is None):
            raise ValueError("give run_ids or filter, not both and not neither")
        return self


class BulkSkip(BaseModel):
    run_id: UUID
    reason: str


class BulkResult(BaseModel):
    matched: int = Field(description="Runs named, or found by the filter, in this call.")
    changed: int = Field(description="Runs cancelled, or replayed.")
    skipped: int = Field(description="Runs the rules left as they were (see `reasons`).")
    reasons: list[BulkSkip] = Field(
        default_factory=list, description="Why runs were skipped: the first 100."
    )
    more: bool = Field(
        default=False,
        description=f"The filter matched more than {MAX_BULK:,} runs: call again for the rest.",
    )


# -- workflows -------------------------------------------------------------------------------------
