"""Reads of runs: what recovery loads into the actors, what an assignment needs of a run, and
what the API shows (a run with its attempts and children, listings, its events and logs; the
history itself is rebuilt by store/run_history.py). Writes go through the persister."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from taskyard.domain.flow import Flow
from taskyard.domain.runs import EMPTY_METADATA, Run, SharedOptions
from taskyard.store.filters import Filters
from taskyard.store.run_history import attempts, history
from taskyard_sdk.models import (
    DurableEntry,
    LogLine,
    RunEvent,
    RunFilter,
    RunKind,
    RunStatus,
    RunSummary,
    RunView,
    TaskOptions,
)

_RUN_STATE_COLUMNS = """
    tenant_id, run_id, task, queue, status, attempt, priority, options::text AS options,
    metadata::text AS metadata, worker_id,
    extract(epoch FROM created_at)::float8 AS created_at,
    extract(epoch FROM queued_at)::float8 AS queued_at,
    extract(epoch FROM retry_at)::float8 AS retry_at,
    extract(epoch FROM assigned_at)::float8 AS assigned_at,
    extract(epoch FROM started_at)::float8 AS started_at,
    extract(epoch FROM finished_at)::float8 AS finished_at,
    output::text AS output, error::text AS error, workflow_run_id, step, flow::text AS flow
"""

_SUMMARY_COLUMNS = """
    run_id, kind, task, step, queue, status, attempt, priority, metadata, created_at, started_at,
    finished_at
"""

WORKER_SEARCH = 10_000  # the newest runs searched for a worker's

_VIEW_COLUMNS = (
    _SUMMARY_COLUMNS
    + """,
    input, output, error, idempotency_key, workflow_run_id, workflow_version, parent_run_id
"""
)

# What a run's history needs of its row (the current attempt's timeline), and its stored events.
_HISTORY_COLUMNS = (
    "created_at, attempt, status, worker_id, assigned_at, started_at, finished_at, error"
)
_STORED_EVENTS = (
    "SELECT at, attempt, type, worker_id, detail FROM run_events "
    "WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq"
)

_GET_RUN = f"""
SELECT {_VIEW_COLUMNS}, worker_id, assigned_at,
       ARRAY(SELECT c.run_id FROM runs c WHERE c.tenant_id = r.tenant_id
             AND c.parent_run_id = r.run_id ORDER BY c.created_at, c.run_id LIMIT 10000)
       AS children,
       (SELECT coalesce(json_agg(json_build_object(
                   'at', extract(epoch FROM e.at), 'attempt', e.attempt, 'type', e.type,
                   'worker_id', e.worker_id, 'detail', e.detail) ORDER BY e.seq), '[]')
        FROM run_events e WHERE e.tenant_id = r.tenant_id AND e.run_id = r.run_id)
       AS stored_events
FROM runs r WHERE r.tenant_id = $1 AND r.run_id = $2
"""


def _run_filters(tenant_id: uuid.UUID, matching: RunFilter) -> Filters:
    filters = Filters(tenant_id)
    filters.any_of("status", [status.value for status in matching.status])
    filters.any_of("task", matching.task)
    since, until = matching.since, matching.until
    if since is not None:  # the ids' own time: the primary key bounds the walk
        filters.add("run_id >= {}", _uuid7_bound(since, upper=False))
    if until is not None:
        filters.add("run_id <= {}", _uuid7_bound(until, upper=True))
    filters.created(since, until)
    filters.metadata(matching.metadata)
    return filters


def _uuid7_bound(moment: datetime, *, upper: bool) -> uuid.UUID:
    """The smallest (or largest) UUIDv7 for a millisecond: time filters become key ranges."""
    millis = int(moment.timestamp() * 1000)
    if upper:
        return uuid.UUID(int=(millis << 80) | ((1 << 80) - 1))
    return uuid.UUID(int=millis << 80)


class RunRepository:
    """Reads of runs, their history and logs. Writes go through the persister."""

    def __init__(self, pool: asyncpg.Pool, options: SharedOptions) -> None:
        self.pool = pool
        self.options = options

    def _run_of(self, row: asyncpg.Record) -> Run:
        metadata = orjson.loads(row["metadata"])
        run = Run(
            tenant_id=row["tenant_id"],
            run_id=row["run_id"],
            task=sys.intern(row["task"]),
            queue=sys.intern(row["queue"]),
            status=RunStatus(row["status"]),
            attempt=row["attempt"],
            priority=row["priority"],
            options=self.options.parse(row["options"]),
            created_at=row["created_at"],
            queued_at=row["queued_at"],
            metadata=metadata or EMPTY_METADATA,
            worker_id=row["worker_id"],
            retry_at=row["retry_at"],
            assigned_at=row["assigned_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            output_json=row["output"].encode() if row["output"] is not None else None,
            error_json=row["error"].encode() if row["error"] is not None else None,
            workflow_run_id=row["workflow_run_id"],
            step=row["step"],
            flow=Flow.from_json(row["flow"]),
        )
        if run.assigned_at is not None and run.status in (RunStatus.ASSIGNED, RunStatus.RUNNING):
            run.deadline = run.assigned_at + run.options.execution_timeout
        return run

    async def active_queues(self, tenant_id: uuid.UUID) -> list[str]:
        """The tenant's queues that hold unfinished runs."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT queue FROM runs WHERE tenant_id = $1 AND kind = 'task' AND "
            "(status IN ('queued', 'assigned', 'running') OR (status = 'pending' "
            "AND workflow_run_id IS NULL))",
            tenant_id,
        )
        return [row["queue"] for row in rows]

    async def load_active_runs(self, tenant_id: uuid.UUID, queue: str) -> list[Run]:
        """Every unfinished run of a queue, oldest first, without payloads."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = []
            cursor = conn.cursor(
                f"SELECT {_RUN_STATE_COLUMNS} FROM runs WHERE tenant_id = $1 AND queue = $2 "
                "AND (status IN ('queued', 'assigned', 'running') OR (status = 'pending' "
                "AND workflow_run_id IS NULL)) ORDER BY run_id",
                tenant_id,
                queue,
                prefetch=10_000,
            )
            async for row in cursor:
                rows.append(self._run_of(row))
            return rows

    async def load_runs(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, Run]:
        rows = await self.pool.fetch(
            f"SELECT {_RUN_STATE_COLUMNS} FROM runs WHERE tenant_id = $1 "
            "AND run_id = ANY($2::uuid[])",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: self._run_of(row) for row in rows}

    async def load_run(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> Run | None:
        row = await self.pool.fetchrow(
            f"SELECT {_RUN_STATE_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = $2",
            tenant_id,
            run_id,
        )
        return self._run_of(row) if row else None

    async def fetch_inputs(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[bytes | None, bytes | None]]:
        """The input and (for steps) the context of runs, as JSON."""
        rows = await self.pool.fetch(
            "SELECT run_id, input::text AS input, context::text AS context FROM runs "
            "WHERE tenant_id = $1 AND run_id = ANY($2::uuid[])",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: (_encoded(row["input"]), _encoded(row["context"])) for row in rows}

    async def durable_history(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, bytes]:
        """Durable runs' logs, as the JSON list an assignment carries (an open wait's result is
        its wait spec, so a replay waits on for the same sleep, not a new one)."""
        rows = await self.pool.fetch(
            "SELECT run_id, json_agg(json_build_object('position', position, 'kind', kind, "
            "'call', call, 'done', done, 'result', CASE WHEN done THEN result ELSE wait END) "
            "ORDER BY position)::text AS entries FROM durable_log WHERE tenant_id = $1 "
            "AND run_id = ANY($2::uuid[]) GROUP BY run_id",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: row["entries"].encode() for row in rows}

    async def durable_log(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[DurableEntry]:
        """A durable run's log, by position (empty for any other run)."""
        rows = await self.pool.fetch(
            "SELECT position, kind, call, done, result::text AS result, wait::text AS wait, "
            "created_at, finished_at FROM durable_log WHERE tenant_id = $1 AND run_id = $2 "
            "ORDER BY position",
            tenant_id,
            run_id,
        )
        return [
            DurableEntry(
                position=row["position"],
                kind=row["kind"],
                call=row["call"],
                done=row["done"],
                result=orjson.loads(row["result"]) if row["result"] is not None else None,
                wait=orjson.loads(row["wait"]) if row["wait"] is not None else None,
                created_at=row["created_at"],
                finished_at=row["finished_at"],
            )
            for row in rows
        ]

    async def open_waits(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[int, str, str]]:
        """The open wait of each pending durable run: (position, call, wait spec JSON)."""
        rows = await self.pool.fetch(
            "SELECT run_id, position, call, wait::text AS wait FROM durable_log "
            "WHERE tenant_id = $1 AND run_id = ANY($2::uuid[]) AND NOT done",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: (row["position"], row["call"], row["wait"]) for row in rows}

    async def load_definitions(self, tenant_id: uuid.UUID) -> dict[str, TaskOptions]:
        rows = await self.pool.fetch(
            "SELECT name, options::text AS options FROM task_definitions WHERE tenant_id = $1",
            tenant_id,
        )
        return {row["name"]: self.options.parse(row["options"]) for row in rows}

    async def run_documents(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        """Runs as JSON-ready documents in the shape of `RunView` (without attempts)."""
        rows = await self.pool.fetch(
            f"SELECT {_VIEW_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::uuid[])",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: dict(row) for row in rows}

    async def run_statuses(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, RunStatus]:
        rows = await self.pool.fetch(
            "SELECT run_id, status FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::uuid[])",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: RunStatus(row["status"]) for row in rows}

    async def get_run(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunView | None:
        """A run with its attempts and children, in one round trip: the row, what its history
        needs, its stored events (as JSON) and its children's ids (a workflow run's steps in a
        second)."""
        row = await self.pool.fetchrow(_GET_RUN, tenant_id, run_id)
        if row is None:
            return None
        view = RunView.model_validate(dict(row))
        view.attempts = attempts(history(row, row["stored_events"]))
        view.children = list(row["children"])
        if view.kind is RunKind.WORKFLOW:
            view.steps = [
                RunSummary.model_validate(dict(row))
                for row in await self.pool.fetch(
                    f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE tenant_id = $1 "
                    "AND workflow_run_id = $2 ORDER BY created_at, run_id",  # their ids are hashed
                    tenant_id,
                    run_id,
                )
            ]
        return view

    async def active_children(
        self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """Unfinished runs spawned by the runs, and the unfinished steps of workflow runs among
        them, each with the run it belongs to."""
        rows = await self.pool.fetch(
            "SELECT run_id, parent_run_id AS parent FROM runs WHERE tenant_id = $1 "
            "AND parent_run_id = ANY($2::uuid[]) "
            "AND status IN ('pending', 'queued', 'assigned', 'running') "
            "UNION SELECT run_id, workflow_run_id FROM runs WHERE tenant_id = $1 "
            "AND workflow_run_id = ANY($2::uuid[]) "
            "AND status IN ('pending', 'queued', 'assigned', 'running')",
            tenant_id,
            run_ids,
        )
        return {row["run_id"]: row["parent"] for row in rows}

    async def list_runs(
        self,
        tenant_id: uuid.UUID,
        matching: RunFilter,
        *,
        before: uuid.UUID | None,
        limit: int,
        worker_id: uuid.UUID | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first. `before` is the cursor: the last run_id of the previous page. With
        `worker_id`: the runs whose latest attempt went to that worker among the WORKER_SEARCH
        newest the other filters match (before the cursor): a bounded walk, as no index holds
        the worker (one would cost every assignment its heap-only update)."""
        filters = _run_filters(tenant_id, matching)
        if worker_id is None:
            query, args = filters.page(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs", "run_id", before, limit
            )
        else:
            query, args = _of_worker(
                filters, f"{_SUMMARY_COLUMNS}", worker_id, before, WORKER_SEARCH
            )
            args.append(limit)
            query = f"{query} ORDER BY run_id DESC LIMIT ${len(args)}"
        rows = await self.pool.fetch(query, *args)
        return [dict(row) for row in rows]  # the shape of RunSummary

    async def run_with_key(self, tenant_id: uuid.UUID, key: str) -> uuid.UUID | None:
        """The run triggered with this idempotency key."""
        run_id: uuid.UUID | None = await self.pool.fetchval(
            "SELECT run_id FROM run_keys WHERE tenant_id = $1 AND key = $2",
            tenant_id,
            key,
        )
        return run_id

    async def status_counts(
        self,
        tenant_id: uuid.UUID,
        matching: RunFilter,
        *,
        newest: int,
        worker_id: uuid.UUID | None = None,
    ) -> dict[str, int]:
        """How many of the newest `newest` runs the filters match are in each status: a
        bounded walk of the primary key, however many runs there are (when the counts add up
        to `newest`, they are of the newest only). With `worker_id`: of those, the runs whose
        latest attempt went to that worker."""
        filters = _run_filters(tenant_id, matching.model_copy(update={"status": []}))
        if worker_id is None:
            query, args = filters.page("SELECT status FROM runs", "run_id", None, newest)
        else:
            query, args = _of_worker(filters, "status", worker_id, None, newest)
        rows = await self.pool.fetch(
            f"SELECT status, count(*) AS n FROM ({query}) newest GROUP BY status", *args
        )
        return {row["status"]: row["n"] for row in rows}

    async def run_events(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[RunEvent]:
        """The run's whole history: the stored events, and the transitions of its current
        attempt, which its row records (see QueueActor._save)."""
        run = await self.pool.fetchrow(
            f"SELECT {_HISTORY_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = $2",
            tenant_id,
            run_id,
        )
        if run is None:
            return []
        stored = await self.pool.fetch(_STORED_EVENTS, tenant_id, run_id)
        return history(run, stored)

    async def run_logs(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, *, limit: int, after: int | None
    ) -> list[tuple[int, LogLine]]:
        rows = await self.pool.fetch(
            "SELECT seq, at, attempt, level, message FROM run_logs "
            "WHERE tenant_id = $1 AND run_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            tenant_id,
            run_id,
            after or 0,
            limit,
        )
        return [
            (
                row["seq"],
                LogLine(
                    at=row["at"], attempt=row["attempt"], level=row["level"], message=row["message"]
                ),
            )
            for row in rows
        ]

    async def run_exists(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> bool:
        found = await self.pool.fetchval(
            "SELECT true FROM runs WHERE tenant_id = $1 AND run_id = $2", tenant_id, run_id
        )
        return bool(found)


def _encoded(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _of_worker(
    filters: Filters, columns: str, worker_id: uuid.UUID, before: uuid.UUID | None, newest: int
) -> tuple[str, list[object]]:
    """`columns` of the runs of `worker_id` among the `newest` runs the filters match."""
    inner, args = filters.page(f"SELECT {columns}, worker_id FROM runs", "run_id", before, newest)
    args.append(worker_id)
    return f"SELECT {columns} FROM ({inner}) newest WHERE worker_id = ${len(args)}", args
