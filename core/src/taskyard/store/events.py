"""Reads of stored events: by id, listed and searched, and those a waiting step may match."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from taskyard.domain.events import PushedEvent
from taskyard.store.filters import Filters

_COLUMNS = "event_id, key, payload, metadata, created_at, triggered, replay_of"


class EventRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, tenant_id: uuid.UUID, event_id: uuid.UUID) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM events WHERE tenant_id = $1 AND event_id = $2",
            tenant_id,
            event_id,
        )
        return dict(row) if row else None

    async def existing(self, tenant_id: uuid.UUID, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these events the tenant has."""
        rows = await self.pool.fetch(
            "SELECT event_id FROM events WHERE tenant_id = $1 AND event_id = ANY($2::uuid[])",
            tenant_id,
            event_ids,
        )
        return {row["event_id"] for row in rows}

    async def search(
        self,
        tenant_id: uuid.UUID,
        *,
        keys: list[str],
        prefix: str | None,
        metadata: dict[str, str],
        since: datetime | None,
        until: datetime | None,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` is the last event_id of the previous page."""
        filters = Filters(tenant_id)
        filters.any_of("key", keys)
        if prefix is not None:
            filters.add("starts_with(key, {})", prefix)
        filters.metadata(metadata)
        filters.created(since, until)
        query, args = filters.page(f"SELECT {_COLUMNS} FROM events", "event_id", before, limit)
        rows = await self.pool.fetch(query, *args)
        return [dict(row) for row in rows]

    async def since(
        self, tenant_id: uuid.UUID, patterns: list[str], since: float
    ) -> list[PushedEvent]:
        """Events whose key matches one of the patterns (exact, or a prefix ending in '*'),
        pushed at or after `since`, oldest first."""
        exact = [p for p in patterns if not p.endswith("*")]
        prefixes = [p[:-1] for p in patterns if p.endswith("*")]
        rows = await self.pool.fetch(
            "SELECT event_id, key, payload::text AS payload, metadata::text AS metadata, "
            "extract(epoch FROM created_at)::float8 AS created_at FROM events "
            "WHERE tenant_id = $1 AND created_at >= to_timestamp($2) "
            "AND (key = ANY($3::text[]) OR EXISTS ("
            "  SELECT 1 FROM unnest($4::text[]) p WHERE starts_with(key, p))) "
            "ORDER BY event_id LIMIT 10000",
            tenant_id,
            since,
            exact,
            prefixes,
        )
        return [
            PushedEvent(
                row["event_id"],
                row["key"],
                orjson.loads(row["payload"] or "null"),
                orjson.loads(row["metadata"]),
                row["created_at"],
            )
            for row in rows
        ]
