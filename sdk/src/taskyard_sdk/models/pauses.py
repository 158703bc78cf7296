"""Pausing a queue, a task, a workflow or a worker."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class PauseKind(StrEnum):
    QUEUE = "queue"
    TASK = "task"
    WORKFLOW = "workflow"  # its steps
    WORKER = "worker"  # by worker id


class PauseView(BaseModel):
    """One thing paused, or (`paused` false) resumed."""

    kind: PauseKind
    name: str = Field(description="The queue's, task's or workflow's name, or the worker's id.")
    paused: bool
    reason: str | None = None
    paused_at: datetime | None = None


class PauseList(BaseModel):
    paused: list[PauseView]
