"""Reads and writes of workflow definitions, and the reads that rebuild unfinished workflow runs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from taskyard_sdk.models import DEFAULT_PRIORITY, RunStatus, WorkflowDefinition


@dataclass(frozen=True, slots=True)
class StoredWorkflow:
    name: str
    version: int
    created: bool
    created_at: datetime
    definition: WorkflowDefinition


@dataclass(frozen=True, slots=True)
class StoredStep:
    run_id: uuid.UUID
    status: RunStatus
    output_json: bytes | None
    error_json: bytes | None
    wait_started_at: float | None
    worker_id: uuid.UUID | None = None  # who ran (or runs) it


@dataclass(frozen=True, slots=True)
class ActiveWorkflowRun:
    run_id: uuid.UUID
    name: str
    version: int
    input_json: bytes
    metadata: dict[str, str]
    priority: int | None  # given at trigger (the default is not told apart from none given)
    created_at: float
    steps: dict[str, StoredStep]
    admitted: bool = True  # else queued, waiting for the workflow's concurrency keys


class WorkflowRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def register(
        self, tenant_id: uuid.UUID, definition: WorkflowDefinition, digest: str
    ) -> StoredWorkflow:
        """The latest version if it has this content, else a new version. Registering an
        older definition again (a rolled-back deploy) makes it the latest version."""
        async with self.pool.acquire() as conn, conn.transaction():
            # One registration per workflow at a time, so versions are numbered without gaps.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1::uuid::text || $2))",
                tenant_id,
                definition.name,
            )
            row = await conn.fetchrow(
                "SELECT version, created_at, digest FROM workflows "
                "WHERE tenant_id = $1 AND name = $2 ORDER BY version DESC LIMIT 1",
                tenant_id,
                definition.name,
            )
            if row is not None and row["digest"] == digest:
                return StoredWorkflow(
                    definition.name, row["version"], False, row["created_at"], definition
                )
            row = await conn.fetchrow(
                "INSERT INTO workflows (tenant_id, name, version, digest, definition) "
                "SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4::jsonb FROM workflows "
                "WHERE tenant_id = $1 AND name = $2 RETURNING version, created_at",
                tenant_id,
                definition.name,
                digest,
                definition.model_dump(mode="json"),
            )
            assert row is not None
            return StoredWorkflow(
                definition.name, row["version"], True, row["created_at"], definition
            )

    async def all_versions(self, tenant_id: uuid.UUID) -> list[StoredWorkflow]:
        rows = await self.pool.fetch(
            "SELECT name, version, created_at, definition::text AS definition FROM workflows "
            "WHERE tenant_id = $1 ORDER BY name, version",
            tenant_id,
        )
        return [_stored(row) for row in rows]

    async def latest(self, tenant_id: uuid.UUID) -> list[StoredWorkflow]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (name) name, version, created_at, definition::text AS definition "
            "FROM workflows WHERE tenant_id = $1 ORDER BY name, version DESC",
            tenant_id,
        )
        return [_stored(row) for row in rows]

    async def get(
        self, tenant_id: uuid.UUID, name: str, version: int | None
    ) -> StoredWorkflow | None:
        row = await self.pool.fetchrow(
            "SELECT name, version, created_at, definition::text AS definition FROM workflows "
            "WHERE tenant_id = $1 AND name = $2 AND ($3::int IS NULL OR version = $3) "
            "ORDER BY version DESC LIMIT 1",
            tenant_id,
            name,
            version,
        )
        return _stored(row) if row else None

    async def active_runs(self, tenant_id: uuid.UUID) -> list[ActiveWorkflowRun]:
        """Every unfinished workflow run of the tenant, with the steps decided so far."""
        runs = await self.pool.fetch(
            "SELECT run_id, task, workflow_version, input::text AS input, "
            "metadata::text AS metadata, priority, extract(epoch FROM created_at)::float8 AS "
            "created_at, status FROM runs WHERE tenant_id = $1 AND kind = 'workflow' "
            "AND status IN ('queued', 'running') ORDER BY run_id",
            tenant_id,
        )
        if not runs:
            return []
        steps: dict[uuid.UUID, dict[str, StoredStep]] = {row["run_id"]: {} for row in runs}
        for row in await self.pool.fetch(
            "SELECT workflow_run_id, step, run_id, status, output::text AS output, "
            "error::text AS error, extract(epoch FROM wait_started_at)::float8 AS waiting, "
            "worker_id FROM runs WHERE tenant_id = $1 AND workflow_run_id = ANY($2::uuid[]) "
            "ORDER BY assigned_at NULLS LAST",
            tenant_id,
            list(steps),
        ):
            steps[row["workflow_run_id"]][row["step"]] = StoredStep(
                row["run_id"],
                RunStatus(row["status"]),
                _bytes(row["output"]),
                _bytes(row["error"]),
                row["waiting"],
                row["worker_id"],
            )
        return [
            ActiveWorkflowRun(
                row["run_id"],
                row["task"],
                row["workflow_version"],
                (row["input"] or "null").encode(),
                orjson.loads(row["metadata"]),
                row["priority"] if row["priority"] != DEFAULT_PRIORITY else None,
                row["created_at"],
                steps[row["run_id"]],
                row["status"] == "running",
            )
            for row in runs
        ]


def _stored(row: asyncpg.Record) -> StoredWorkflow:
    return StoredWorkflow(
        row["name"],
        row["version"],
        False,
        row["created_at"],
        WorkflowDefinition.model_validate_json(row["definition"]),
    )


def _bytes(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None
