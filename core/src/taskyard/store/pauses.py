"""What is paused, in Postgres. Writes are few (an operator's call) and awaited."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskyard_sdk.models import PauseKind


@dataclass(frozen=True, slots=True)
class Paused:
    kind: PauseKind
    name: str
    reason: str | None
    paused_at: datetime


class PauseRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def pause(
        self, tenant_id: uuid.UUID, kind: PauseKind, name: str, reason: str | None
    ) -> Paused:
        """Pause (committed when this returns); pausing again keeps the first time, and
        the new reason when one is given."""
        row = await self.pool.fetchrow(
            "INSERT INTO pauses (tenant_id, kind, name, reason) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (tenant_id, kind, name) DO UPDATE "
            "SET reason = coalesce(excluded.reason, pauses.reason) "
            "RETURNING kind, name, reason, paused_at",
            tenant_id,
            kind.value,
            name,
            reason,
        )
        return _paused(row)

    async def resume(self, tenant_id: uuid.UUID, kind: PauseKind, name: str) -> None:
        """Resume (committed when this returns); what is not paused stays so."""
        await self.pool.execute(
            "DELETE FROM pauses WHERE tenant_id = $1 AND kind = $2 AND name = $3",
            tenant_id,
            kind.value,
            name,
        )

    async def of_tenant(self, tenant_id: uuid.UUID) -> list[Paused]:
        rows = await self.pool.fetch(
            "SELECT kind, name, reason, paused_at FROM pauses WHERE tenant_id = $1 "
            "ORDER BY kind, name",
            tenant_id,
        )
        return [_paused(row) for row in rows]


def _paused(row: asyncpg.Record) -> Paused:
    return Paused(PauseKind(row["kind"]), row["name"], row["reason"], row["paused_at"])
