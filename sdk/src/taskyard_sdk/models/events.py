"""Pushed events."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from taskyard_sdk.models._base import EVENT_KEY_PATTERN, _Strict


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
