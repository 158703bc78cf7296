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
    paused: bool = Field(default=False, description="It, or its workflow, is paused.")


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
    slots_used: int = Field(default=0, description="Slots holding an attempt now.")
    paused: bool = Field(default=False, description="Paused: it is assigned nothing new.")
    last_heard_at: float = Field(
        description="When the engine last heard from it (a heartbeat or any other frame)."
    )


class QueueMinute(BaseModel):
    at: float = Field(description="The minute's start, in seconds since the epoch.")
    started: int = Field(description="Attempts that started in the minute.")
    succeeded: int
    failed: int = Field(description="Runs that ended otherwise: failed, timed out, cancelled.")


class QueueWaits(BaseModel):
    """How long the last hour's started attempts had waited in the queue, in seconds (each
    within 4.5%: read from log-spaced buckets)."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


class BusyKey(BaseModel):
    task: str
    expression: str = Field(description="The task's concurrency expression.")
    key: str = Field(description="The value the expression gave.")
    running: int
    max_runs: int
    waiting: int


class QueueInfo(BaseModel):
    queue: str
    queued: int = Field(description="Waiting to start (a retry's back-off included).")
    running: int = Field(description="Assigned to a worker or running on one.")
    suspended: int = Field(description="Durable runs suspended in a wait.")
    oldest_queued_at: float | None = Field(
        description="When the run waiting longest was queued (seconds since the epoch)."
    )
    workers: int
    slots: int
    slots_used: int
    paused: bool = Field(default=False, description="Paused: nothing new is assigned.")
    counted_since: float = Field(
        description="When this engine began counting the queue's activity (it keeps an hour, "
        "in memory)."
    )
    minutes: list[QueueMinute] = Field(description="The last 60 minutes, oldest first.")
    waits: QueueWaits | None
    busiest_keys: list[BusyKey]
