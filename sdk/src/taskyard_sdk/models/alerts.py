"""Alert rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskyard_sdk._durations import parse_duration
from taskyard_sdk.models._base import _Strict

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
