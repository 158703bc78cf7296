"""An application's outbox table (see taskyard_sdk.outbox), as the engine drains it. Rows are
claimed in batches, oldest first, with FOR UPDATE SKIP LOCKED: a claim marks its rows
(`claimed_until`, a lease) and commits, so concurrent claims never return the same row and no lock
is held while the runs are triggered. A claimed row is deleted once its run has committed; one
whose trigger failed is unclaimed and waits with its error (`ready_at`) until it is tried again.
The claims an engine held when it stopped are released when the table is next drained.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg

from taskyard_sdk.outbox import TABLE

CLAIM = f"""
UPDATE {TABLE} o SET claimed_until = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM (SELECT id FROM {TABLE} WHERE claimed_until IS NULL AND ready_at <= now()
      ORDER BY ready_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS c
WHERE o.id = c.id
RETURNING o.id, o.kind, o.target, o.created_at, o.attempts,
    -- a task's options apart: the rows of one task carry the same, checked once a batch
    (CASE WHEN o.kind = 'task' THEN o.body - 'options' ELSE o.body END)::text AS body,
    (CASE WHEN o.kind = 'task' THEN o.body -> 'options' END)::text AS options
"""

DELETE = f"DELETE FROM {TABLE} WHERE id = ANY($1::uuid[])"

FAILED = f"""
UPDATE {TABLE} o SET claimed_until = NULL, last_error = f.error,
       ready_at = now() + make_interval(secs => f.delay)
FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS f(id, error, delay)
WHERE o.id = f.id
"""

RELEASE = f"UPDATE {TABLE} SET claimed_until = NULL WHERE claimed_until IS NOT NULL"

# What identifies the table: the same oid in the same database of the same server (started at
# the same moment: a restart, or another server, is another identity).
IDENTITY = """
SELECT current_database(), pg_postmaster_start_time(), c.oid, n.nspname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""


class TableIdentity(NamedTuple):
    database: str
    server_started: datetime
    oid: int
    schema: str


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: uuid.UUID
    kind: str
    target: str
    created_at: datetime
    attempts: int  # claims so far, this one included
    body: str  # JSON, without a task's options
    options: str | None  # a task's options, as JSON (Postgres's, so equal ones are one text)


class OutboxMissing(RuntimeError):
    """The database has no outbox table."""


async def identity(conn: asyncpg.Connection) -> TableIdentity:
    """Which table `taskyard_outbox` is on this connection; OutboxMissing when there is none."""
    row = await conn.fetchrow(IDENTITY, TABLE)
    if row is None:
        database = await conn.fetchval("SELECT current_database()")
        raise OutboxMissing(
            f"there is no table {TABLE} in database {database!r}; create it with "
            f"`taskyard outbox install --database-url ...`"
        )
    return TableIdentity(*row)


async def claim(conn: asyncpg.Connection, limit: int, lease: float) -> list[OutboxEntry]:
    """Up to `limit` rows ready to trigger, oldest first, claimed for `lease` seconds."""
    rows = await conn.fetch(CLAIM, limit, lease)
    entries = [OutboxEntry(*row) for row in rows]
    entries.sort(key=lambda entry: entry.created_at)
    return entries


async def delete(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> None:
    await conn.execute(DELETE, ids)


async def failed(conn: asyncpg.Connection, failures: dict[uuid.UUID, tuple[str, float]]) -> None:
    """Record why rows could not be triggered; each waits its delay before it is tried again."""
    ids = list(failures)
    await conn.execute(FAILED, ids, [failures[i][0] for i in ids], [failures[i][1] for i in ids])


async def release(conn: asyncpg.Connection) -> int:
    """Release every claim; how many. Called by the one drainer of the table as it starts, the
    claims being those of a drain that stopped."""
    status: str = await conn.execute(RELEASE)
    return int(status.split()[-1])
