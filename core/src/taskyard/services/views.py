"""Answers of the services that have no model in the SDK (the SDK reads them as JSON)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field

from taskyard_sdk.models import TaskOptions


class TaskInfo(BaseModel):
    name: str
    options: TaskOptions
    workers: list[str] = Field(description="Names of connected workers that run this task.")
    input_schema: dict[str, Any] | None = Field(
        default=None, description="The input's JSON Schema, as a worker of the task sent it."
    )


class WorkerInfo(BaseModel):
    worker_id: uuid.UUID
    name: str
    queue: str
    slots: int
    labels: dict[str, Any]
    tasks: list[str]
    connected_at: float
    draining: bool = Field(
        default=False, description="Shutting down: finishes its attempts, takes no new ones."
    )
