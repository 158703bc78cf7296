"""The SQL of retention (services/retention.py): history partitions made, listed, checked and
dropped, and one tenant's expired history deleted in batches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from taskyard.domain.retention import (
    UNFINISHED,
    HistoryRow,
    Partition,
    first_id_at,
    millisecond_of,
    parse_partitions,
)

# The history of runs, partitioned alike and dropped together; events apart.
RUN_TABLES = ("runs", "run_events", "run_logs", "durable_log")
EVENTS = "events"
# A partition is dropped only if its lock comes at once: waiting for it would queue every
# write of the hot path behind the drop.
LOCK_TIMEOUT = "500ms"


@dataclass(frozen=True, slots=True)
class Contents:
    """What a run partition holds: whether any run is unfinished, and when the last ended."""

    unfinished: bool
    last_finished: datetime | None


class RetentionRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add_partitions(self, day: date, ahead: int) -> int:
        """The partitions of `day` and the `ahead` days after it, made where missing."""
        made: int = await self.pool.fetchval(
            "SELECT taskyard_add_history_partitions($1, $2)", day, ahead
        )
        return made

    async def partitions(self, table: str) -> list[Partition]:
        rows = await self.pool.fetch(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass",
            table,
        )
        return parse_partitions(table, [(row["relname"], row["bound"]) for row in rows])

    async def contents(self, partition: Partition) -> Contents:
        """One read of the partition (a dropped partition is read once, before it goes)."""
        row = await self.pool.fetchrow(
            f"SELECT bool_or(status = ANY ($1::text[])) AS unfinished, "
            f'max(finished_at) AS last FROM "{partition.name}"',
            list(UNFINISHED),
        )
        assert row is not None
        return Contents(bool(row["unfinished"]), row["last"])

    async def drop(self, names: list[str], keys: tuple[uuid.UUID | None, uuid.UUID] | None) -> bool:
        """Drop the partitions `names` and, given `keys` (from, below), the idempotency keys of
        runs with ids in that range, in one transaction; False when a lock did not come in time
        (nothing is dropped then)."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                if keys is not None:
                    await conn.execute(
                        "DELETE FROM run_keys WHERE run_id < $2 "
                        "AND ($1::uuid IS NULL OR run_id >= $1)",
                        *keys,
                    )
                for name in names:
                    await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        except asyncpg.LockNotAvailableError:
            return False
        return True

    async def tenant_retention(self, default_days: float) -> dict[uuid.UUID, float]:
        """Each tenant's retention in days."""
        rows = await self.pool.fetch(
            "SELECT tenant_id, coalesce(retention_days, $1) AS days FROM tenants", default_days
        )
        return {row["tenant_id"]: row["days"] for row in rows}

    async def history_rows(
        self, tenant_id: uuid.UUID, start: uuid.UUID, below: uuid.UUID, limit: int
    ) -> list[HistoryRow]:
        """Up to `limit` runs of the tenant with ids in [start, below), and every other run of
        the last millisecond among them: whole milliseconds, as the rules need."""
        query = (
            "SELECT run_id, status, finished_at FROM runs "
            "WHERE tenant_id = $1 AND run_id >= $2 AND run_id < $3 ORDER BY run_id"
        )
        rows = await self.pool.fetch(f"{query} LIMIT $4", tenant_id, start, below, limit)
        if len(rows) == limit:
            last = millisecond_of(rows[-1]["run_id"])
            rows = [row for row in rows if millisecond_of(row["run_id"]) != last]
            rows += await self.pool.fetch(
                query, tenant_id, first_id_at(last), min(first_id_at(last + 1), below)
            )
        return [HistoryRow(row["run_id"], row["status"], row["finished_at"]) for row in rows]

    async def delete_runs(self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]) -> None:
        """The runs, with their events, logs, durable logs and idempotency keys."""
        async with self.pool.acquire() as conn, conn.transaction():
            for table in (*RUN_TABLES, "run_keys"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE tenant_id = $1 AND run_id = ANY ($2::uuid[])",
                    tenant_id,
                    run_ids,
                )

    async def delete_events(
        self, tenant_id: uuid.UUID, start: uuid.UUID, below: uuid.UUID, limit: int
    ) -> int:
        """Up to `limit` of the tenant's pushed events with ids in [start, below)."""
        result = await self.pool.execute(
            "DELETE FROM events WHERE (tenant_id, event_id) IN ("
            "SELECT tenant_id, event_id FROM events WHERE tenant_id = $1 AND event_id >= $2 "
            "AND event_id < $3 ORDER BY event_id LIMIT $4)",
            tenant_id,
            start,
            below,
            limit,
        )
        return int(result.split()[-1])
