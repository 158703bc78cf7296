"""The rows a write batch carries, one kind per table: their columns (SQL name and type, in row
order) and the one function that builds each kind.

Rows are plain tuples on purpose: a batch of 1,000 runs carries a few thousand, orjson encodes a
tuple at half the cost of a NamedTuple (which it cannot encode without a fallback per row), and a
NamedTuple is built at ten times the cost. So the order lives here, once: each builder takes
keyword arguments named as the columns, `tests/unit/test_rows.py` checks that it puts each into the
column of that name, and code that reads a row back names the column (`NEW_RUN.idempotency_key`).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from taskyard.domain.runs import Run, json_value
from taskyard_sdk.models import RunStatus

Row = tuple[Any, ...]


class Columns:
    """A table's columns as rows carry them ("name type, ..."); `columns.<name>` is the
    position of that column in a row."""

    def __init__(self, spec: str) -> None:
        self.sql = spec
        self.names = tuple(part.split()[0] for part in spec.split(","))
        for position, name in enumerate(self.names):
            setattr(self, name, position)

    def __getattr__(self, name: str) -> int:  # the positions set above; this says so to mypy
        raise AttributeError(f"no column {name!r} in {self.names}")


NEW_RUN = Columns(
    "tenant_id uuid, run_id uuid, task text, queue text, status text, attempt int, priority int, "
    "options jsonb, input jsonb, metadata jsonb, idempotency_key text, created_at timestamptz, "
    "queued_at timestamptz, kind text, workflow_version int, workflow_run_id uuid, step text, "
    "parent_run_id uuid, context jsonb, wait_started_at timestamptz, error jsonb, "
    "finished_at timestamptz, flow jsonb"
)
# A run's mutable columns; the latest state of each run in a batch wins.
RUN_STATE = Columns(
    "tenant_id uuid, run_id uuid, status text, attempt int, worker_id uuid, "
    "queued_at timestamptz, retry_at timestamptz, assigned_at timestamptz, "
    "started_at timestamptz, finished_at timestamptz, output jsonb, error jsonb"
)
RUN_EVENT = Columns(
    "tenant_id uuid, run_id uuid, at timestamptz, attempt int, type text, worker_id uuid, "
    "detail jsonb"
)
RUN_LOG = Columns(
    "tenant_id uuid, run_id uuid, at timestamptz, attempt int, level text, message text"
)
# triggered: a Postgres array literal of the run ids the event started
PUSHED_EVENT = Columns(
    "tenant_id uuid, event_id uuid, key text, payload jsonb, metadata jsonb, "
    "created_at timestamptz, triggered uuid[], replay_of uuid"
)
# An unconfigured bucket with empty usage is deleted instead of written.
RATE_USAGE = Columns(
    "tenant_id uuid, key text, lim int, duration text, configured bool, usage jsonb"
)
# A done entry is never reopened.
DURABLE_ENTRY = Columns(
    "tenant_id uuid, run_id uuid, position int, kind text, call text, done bool, result jsonb, "
    "wait jsonb, finished_at timestamptz"
)


def new_run_row(
    *,
    tenant_id: uuid.UUID,
    run_id: uuid.UUID,
    task: str,
    queue: str,
    status: str,
    priority: int,
    options_json: str | bytes,
    input_json: str | bytes | None,
    metadata_json: str | bytes,
    created_at: float,
    idempotency_key: str | None = None,
    kind: str = "task",
    workflow_version: int | None = None,
    workflow_run_id: uuid.UUID | None = None,
    step: str | None = None,
    parent_run_id: uuid.UUID | None = None,
    context_json: str | bytes | None = None,
    wait_started_at: float | None = None,
    error_json: str | bytes | None = None,
    finished_at: float | None = None,
    flow_json: str | bytes | None = None,
) -> Row:
    """A new run (attempt 1, queued when created)."""
    return (
        tenant_id,
        run_id,
        task,
        queue,
        status,
        1,
        priority,
        orjson.Fragment(options_json),
        json_value(input_json),
        orjson.Fragment(metadata_json),
        idempotency_key,
        created_at,
        created_at,
        kind,
        workflow_version,
        workflow_run_id,
        step,
        parent_run_id,
        json_value(context_json),
        wait_started_at,
        json_value(error_json),
        finished_at,
        json_value(flow_json),
    )


def run_state_row(run: Run) -> Row:
    """A task run's mutable columns as the queue actor holds them."""
    return (
        run.tenant_id,
        run.run_id,
        run.status.value,
        run.attempt,
        run.worker_id,
        run.queued_at,
        run.retry_at,
        run.assigned_at,
        run.started_at,
        run.finished_at,
        json_value(run.output_json),
        json_value(run.error_json),
    )


def owned_state_row(
    tenant_id: uuid.UUID,
    run_id: uuid.UUID,
    status: RunStatus,
    queued_at: float,
    now: float,
    *,
    started_at: float | None = None,
    output: bytes | None = None,
    error: bytes | None = None,
) -> Row:
    """The state of a run the tenant actor owns (a workflow run, or a step not yet queued):
    one attempt, no worker, finished `now` if its status is final."""
    return (
        tenant_id,
        run_id,
        status.value,
        1,
        None,
        queued_at,
        None,
        None,
        started_at,
        now if status.terminal else None,
        json_value(output or None),
        json_value(error or None),
    )


def run_event_row(
    *,
    tenant_id: uuid.UUID,
    run_id: uuid.UUID,
    at: float,
    attempt: int,
    type: str,
    worker_id: uuid.UUID | None,
    detail: dict[str, Any] | None,
) -> Row:
    return (
        tenant_id,
        run_id,
        at,
        attempt,
        type,
        worker_id,
        orjson.Fragment(orjson.dumps(detail)) if detail is not None else None,
    )


def run_log_row(
    *, tenant_id: uuid.UUID, run_id: uuid.UUID, at: float, attempt: int, level: str, message: str
) -> Row:
    return (tenant_id, run_id, at, attempt, level, message)


def pushed_event_row(
    *,
    tenant_id: uuid.UUID,
    event_id: uuid.UUID,
    key: str,
    payload_json: bytes,
    metadata: dict[str, str],
    created_at: float,
    triggered: list[uuid.UUID],
    replay_of: uuid.UUID | None,
) -> Row:
    return (
        tenant_id,
        event_id,
        key,
        orjson.Fragment(payload_json),
        orjson.Fragment(orjson.dumps(metadata)),
        created_at,
        "{" + ",".join(map(str, triggered)) + "}",
        replay_of,
    )


def rate_usage_row(  # usage stays text: an empty one ("[]") deletes an unconfigured bucket
    *,
    tenant_id: uuid.UUID,
    key: str,
    lim: int,
    duration: str,
    configured: bool,
    usage: list[list[float]],
) -> Row:
    return (tenant_id, key, lim, duration, configured, orjson.dumps(usage).decode())


def durable_entry_row(
    *,
    tenant_id: uuid.UUID,
    run_id: uuid.UUID,
    position: int,
    kind: str,
    call: str,
    done: bool,
    result: Any,
    wait: str | None,
    finished_at: float | None,
) -> Row:
    """A durable log entry; its result is stored only once it is done."""
    return (
        tenant_id,
        run_id,
        position,
        kind,
        call,
        done,
        orjson.Fragment(orjson.dumps(result)) if done else None,
        json_value(wait),
        finished_at,
    )
