"""Rate limits in Postgres: the ones set through the API, and every bucket's usage (which the
persister writes behind the assignments that took the units)."""

from __future__ import annotations

import uuid

import asyncpg
import orjson

from taskyard.domain.rate_limits import Usage
from taskyard_sdk.models import RateDuration


class RateLimitRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def put(self, tenant_id: uuid.UUID, key: str, limit: int, duration: RateDuration) -> None:
        """Set a limit (committed when this returns). A changed duration starts afresh."""
        await self.pool.execute(
            'INSERT INTO rate_limits (tenant_id, key, "limit", duration, configured) '
            "VALUES ($1, $2, $3, $4, true) ON CONFLICT (tenant_id, key) DO UPDATE "
            'SET "limit" = excluded."limit", duration = excluded.duration, configured = true, '
            "usage = CASE WHEN rate_limits.duration = excluded.duration THEN rate_limits.usage "
            "ELSE '[]'::jsonb END, updated_at = now()",
            tenant_id,
            key,
            limit,
            duration.value,
        )

    async def delete(self, tenant_id: uuid.UUID, key: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM rate_limits WHERE tenant_id = $1 AND key = $2 AND configured",
            tenant_id,
            key,
        )
        return bool(status != "DELETE 0")

    async def load(self, tenant_id: uuid.UUID) -> list[Usage]:
        rows = await self.pool.fetch(
            'SELECT key, "limit", duration, configured, usage::text AS usage FROM rate_limits '
            "WHERE tenant_id = $1",
            tenant_id,
        )
        return [
            Usage(
                row["key"],
                row["limit"],
                RateDuration(row["duration"]),
                row["configured"],
                orjson.loads(row["usage"]),
            )
            for row in rows
        ]
