"""The REST API's request and response models, shared by the SDK and the engine."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskyard_sdk._durations import parse_duration

MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 1, 2, 4
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"


class RunStatus(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED,
                       RunStatus.TIMED_OUT})


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
    task: str
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
