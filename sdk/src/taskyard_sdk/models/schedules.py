"""Crons and one-off schedules."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

from taskyard_sdk.models._base import NAME_PATTERN, _Strict


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


class FiredNow(BaseModel):
    run_id: UUID = Field(description="The run (or workflow run) the cron started.")


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
