"""Crons and one-off schedules in Postgres. Writes are few (an API call, a tick) and awaited."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from taskyard.errors import Conflict
from taskyard.ids import new_id

_COLUMNS = """
    tenant_id, schedule_id, kind, name, task, workflow, expression, timezone,
    extract(epoch FROM at)::float8 AS at, input::text AS input, metadata::text AS metadata,
    catch_up, paused, declared_in_code, extract(epoch FROM last_tick)::float8 AS last_tick,
    run_id, extract(epoch FROM created_at)::float8 AS created_at
"""


@dataclass(frozen=True, slots=True)
class Schedule:
    tenant_id: uuid.UUID
    schedule_id: uuid.UUID
    kind: str  # "cron" | "once"
    name: str | None
    task: str | None
    workflow: str | None
    expression: str | None
    timezone: str | None
    at: float | None
    input: Any
    metadata: dict[str, str]
    catch_up: str
    paused: bool
    declared_in_code: bool
    last_tick: float | None
    run_id: uuid.UUID | None
    created_at: float

    @property
    def target(self) -> str:
        return f"task {self.task!r}" if self.task else f"workflow {self.workflow!r}"


def _schedule(row: asyncpg.Record) -> Schedule:
    return Schedule(
        row["tenant_id"],
        row["schedule_id"],
        row["kind"],
        row["name"],
        row["task"],
        row["workflow"],
        row["expression"],
        row["timezone"],
        row["at"],
        orjson.loads(row["input"]) if row["input"] is not None else None,
        orjson.loads(row["metadata"]),
        row["catch_up"],
        row["paused"],
        row["declared_in_code"],
        row["last_tick"],
        row["run_id"],
        row["created_at"],
    )


class ScheduleRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_cron(
        self,
        tenant_id: uuid.UUID,
        *,
        name: str,
        task: str | None,
        workflow: str | None,
        expression: str,
        timezone: str,
        input: Any,
        metadata: dict[str, str],
        catch_up: str,
        declared_in_code: bool = False,
    ) -> Schedule:
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO schedules (tenant_id, schedule_id, kind, name, task, workflow, "
                "expression, timezone, input, metadata, catch_up, declared_in_code) "
                "VALUES ($1, $2, 'cron', $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11) "
                f"RETURNING {_COLUMNS}",
                tenant_id,
                new_id(),
                name,
                task,
                workflow,
                expression,
                timezone,
                input,
                metadata,
                catch_up,
                declared_in_code,
            )
        except asyncpg.UniqueViolationError:
            target = f"task {task!r}" if task else f"workflow {workflow!r}"
            raise Conflict(
                f"{target} already has a cron named {name!r}; delete it first or "
                f"choose another name"
            ) from None
        assert row is not None
        return _schedule(row)

    async def create_once(
        self,
        tenant_id: uuid.UUID,
        *,
        task: str | None,
        workflow: str | None,
        at: datetime,
        input: Any,
        metadata: dict[str, str],
    ) -> Schedule:
        row = await self.pool.fetchrow(
            "INSERT INTO schedules (tenant_id, schedule_id, kind, task, workflow, at, input, "
            "metadata) VALUES ($1, $2, 'once', $3, $4, $5, $6::jsonb, $7::jsonb) "
            f"RETURNING {_COLUMNS}",
            tenant_id,
            new_id(),
            task,
            workflow,
            at,
            input,
            metadata,
        )
        assert row is not None
        return _schedule(row)

    async def get(
        self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, kind: str | None = None
    ) -> Schedule | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM schedules WHERE tenant_id = $1 AND schedule_id = $2 "
            "AND ($3::text IS NULL OR kind = $3)",
            tenant_id,
            schedule_id,
            kind,
        )
        return _schedule(row) if row else None

    async def of_kind(self, tenant_id: uuid.UUID, kind: str) -> list[Schedule]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM schedules WHERE tenant_id = $1 AND kind = $2 "
            "ORDER BY schedule_id",
            tenant_id,
            kind,
        )
        return [_schedule(row) for row in rows]

    async def active(self, tenant_ids: list[uuid.UUID]) -> list[Schedule]:
        """What may still fire of these tenants: crons not paused, one-offs not fired."""
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM schedules WHERE tenant_id = ANY ($1::uuid[]) AND "
            "((kind = 'cron' AND NOT paused) OR (kind = 'once' AND run_id IS NULL))",
            tenant_ids,
        )
        return [_schedule(row) for row in rows]

    async def delete(self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, kind: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM schedules WHERE tenant_id = $1 AND schedule_id = $2 AND kind = $3",
            tenant_id,
            schedule_id,
            kind,
        )
        return bool(status != "DELETE 0")

    async def set_paused(
        self, tenant_id: uuid.UUID, cron_id: uuid.UUID, paused: bool
    ) -> Schedule | None:
        # Resuming counts ticks from now on: the paused time is skipped, even by a catch-up
        # after a restart.
        row = await self.pool.fetchrow(
            "UPDATE schedules SET paused = $3, last_tick = CASE WHEN NOT $3 AND paused "
            "THEN greatest(last_tick, now()) ELSE last_tick END "
            "WHERE tenant_id = $1 AND schedule_id = $2 "
            f"AND kind = 'cron' RETURNING {_COLUMNS}",
            tenant_id,
            cron_id,
            paused,
        )
        return _schedule(row) if row else None

    async def reschedule(
        self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, at: datetime
    ) -> Schedule | None:
        row = await self.pool.fetchrow(
            "UPDATE schedules SET at = $3 WHERE tenant_id = $1 AND schedule_id = $2 "
            f"AND kind = 'once' AND run_id IS NULL RETURNING {_COLUMNS}",
            tenant_id,
            schedule_id,
            at,
        )
        return _schedule(row) if row else None

    async def fired(
        self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, tick: float, run_id: uuid.UUID
    ) -> None:
        """Remember the latest tick fired (never move it back) and, for a one-off, its run."""
        await self.pool.execute(
            "UPDATE schedules SET last_tick = greatest(last_tick, to_timestamp($3)), "
            "run_id = CASE WHEN kind = 'once' THEN $4 ELSE run_id END "
            "WHERE tenant_id = $1 AND schedule_id = $2",
            tenant_id,
            schedule_id,
            tick,
            run_id,
        )

    async def sync_code_crons(
        self,
        tenant_id: uuid.UUID,
        *,
        task: str | None,
        workflow: str | None,
        expressions: list[str],
    ) -> bool:
        """Make the crons declared in code for a target exactly `expressions` (named by their
        expression). Returns whether anything changed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT schedule_id, expression FROM schedules WHERE tenant_id = $1 "
                "AND kind = 'cron' AND declared_in_code AND task IS NOT DISTINCT FROM $2 "
                "AND workflow IS NOT DISTINCT FROM $3",
                tenant_id,
                task,
                workflow,
            )
            existing = {row["expression"]: row["schedule_id"] for row in rows}
            stale = [existing[e] for e in existing if e not in expressions]
            if stale:
                await conn.execute(
                    "DELETE FROM schedules WHERE tenant_id = $1 AND schedule_id = ANY($2::uuid[])",
                    tenant_id,
                    stale,
                )
            added = [e for e in dict.fromkeys(expressions) if e not in existing]
            for expression in added:
                await conn.execute(
                    "INSERT INTO schedules (tenant_id, schedule_id, kind, name, task, workflow, "
                    "expression, timezone, input, declared_in_code) VALUES ($1, $2, 'cron', $3, "
                    "$4, $5, $3, 'UTC', 'null'::jsonb, true) ON CONFLICT DO NOTHING",
                    tenant_id,
                    new_id(),
                    expression,
                    task,
                    workflow,
                )
            return bool(stale or added)
