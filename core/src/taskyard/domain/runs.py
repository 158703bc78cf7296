"""A run as the engine holds it in memory, and the rules of its lifecycle.

queued -> assigned -> running -> succeeded | failed | cancelled | timed_out. A failed or timed-out
attempt with retries left goes back to queued (after its back-off) with the next attempt number.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import orjson

from taskyard.domain.flow import Flow
from taskyard_sdk.models import RunStatus, TaskOptions

ACTIVE = (RunStatus.QUEUED, RunStatus.ASSIGNED, RunStatus.RUNNING)
EMPTY_METADATA: dict[str, str] = {}
WORKFLOW_QUEUE = ""  # the queue column of workflow runs' rows: no queue actor owns them


@dataclass(slots=True, eq=False)
class Run:
    """An unfinished run. Owned by the QueueActor of its tenant and queue."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    task: str
    queue: str
    status: RunStatus
    attempt: int
    priority: int
    options: TaskOptions
    created_at: float
    queued_at: float
    metadata: dict[str, str] = field(default_factory=lambda: EMPTY_METADATA)
    input_json: bytes | None = None  # the payload, while it is cached in memory
    worker_id: uuid.UUID | None = None
    retry_at: float | None = None
    assigned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None  # execution deadline of the current attempt
    output_json: bytes | None = None
    error_json: bytes | None = None
    seq: int = 0  # position in the ready queue (FIFO within a priority)
    ready: bool = False  # in the ready queue (not waiting for a retry back-off)
    workflow_run_id: uuid.UUID | None = None  # for a workflow's step
    step: str | None = None
    context_json: bytes | None = None  # a step's StepContext, cached in memory with the input
    flow: Flow | None = None  # concurrency keys, rate-limit units, sticky worker (few runs have)
    batch_id: uuid.UUID | None = None  # a batch task's: the batch of its attempt (1st run's id)


def json_value(data: str | bytes | None) -> orjson.Fragment | None:
    """A JSON column's value in a row the persister writes: embedded as the JSON it already
    is."""
    return orjson.Fragment(data) if data is not None else None


def retry_delay(options: TaskOptions, retry_number: int, retry_after: float | None) -> float:
    """Seconds before retry `retry_number` (1 for the first retry) starts."""
    if retry_after is not None:
        return min(retry_after, options.backoff_max_seconds)
    if options.backoff_factor is None:
        return 0.0
    try:
        delay = options.backoff_factor**retry_number
    except OverflowError:
        return options.backoff_max_seconds
    return min(delay, options.backoff_max_seconds)


def options_json(options: TaskOptions) -> str:
    """Options as stored with each run: defaults left out (most runs use most of them)."""
    return options.model_dump_json(exclude_defaults=True)


class SharedOptions:
    """One TaskOptions instance per distinct value, with its stored JSON, for every run of the
    engine, triggered or read back from Postgres: a million queued runs hold references, not
    copies, and a queue's heaps (keyed by options) find them by identity instead of comparing
    models field by field. Bounded: when full it starts over (equal options then compare by
    value again, which is only slower)."""

    def __init__(self, max_size: int = 10_000) -> None:
        self.max_size = max_size
        self._by_value: dict[TaskOptions, tuple[TaskOptions, str]] = {}
        self._by_text: dict[str, TaskOptions] = {}

    def intern(self, options: TaskOptions) -> tuple[TaskOptions, str]:
        """The shared instance equal to `options`, and its JSON."""
        shared = self._by_value.get(options)
        if shared is None:
            if len(self._by_value) >= self.max_size:
                self._by_value.clear()
                self._by_text.clear()
            shared = self._by_value[options] = (options, options_json(options))
        return shared

    def parse(self, text: str) -> TaskOptions:
        """The shared instance of options stored as `text`."""
        options = self._by_text.get(text)
        if options is None:
            options = self._by_text[text] = self.intern(TaskOptions.model_validate_json(text))[0]
        return options


def json_bytes(value: object) -> bytes:
    """JSON for keeping in memory. orjson returns buffers with kilobytes of spare capacity;
    a million queued runs holding those would need gigabytes, so keep a right-sized copy."""
    return memoryview(orjson.dumps(value)).tobytes()


def error_json(kind: str, message: str, traceback: str | None = None) -> bytes:
    return json_bytes({"type": kind, "message": message, "traceback": traceback})
