"""An application's outbox table (see taskyard_sdk.outbox), as the engine drains it: rows are
claimed in batches, each claim a short lease (`ready_at` moved ahead) taken with FOR UPDATE SKIP
LOCKED, so that several drainers never take the same row and no lock is held while the runs are
triggered. A claimed row is deleted once its run has committed; one whose trigger failed waits
with its error until it is tried again. A claim whose engine died expires, or is released by the
next engine that starts to drain the table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskyard_sdk.outbox import TABLE

CLAIM = f"""
UPDATE {TABLE} o SET ready_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM (SELECT id FROM {TABLE} WHERE ready_at <= now() ORDER BY ready_at LIMIT $1
      FOR UPDATE SKIP LOCKED) AS c
WHERE o.id = c.id
RETURNING o.id, o.kind, o.target, o.body::text AS body, o.created_at, o.attempts
"""

DELETE = f"DELETE FROM {TABLE} WHERE id = ANY($1::uuid[])"

FAILED = f"""
UPDATE {TABLE} o SET last_error = f.error, ready_at = now() + make_interval(secs => f.delay)
FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS f(id, error, delay)
WHERE o.id = f.id
"""

# Claims of rows that have not failed: taken by an engine that stopped before it finished them.
RELEASE = f"UPDATE {TABLE} SET ready_at = now() WHERE ready_at > now() AND last_error IS NULL"

# What identifies the table: the same oid in the same database of the same server.
IDENTITY = f"""
SELECT current_database(), pg_postmaster_start_time(), to_regclass('{TABLE}')::oid AS oid
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: uuid.UUID
    kind: str
    target: str
    body: str  # JSON
    created_at: datetime
    attempts: int


class OutboxMissing(RuntimeError):
    """The database has no outbox table."""


async def identity(conn: asyncpg.Connection) -> tuple[object, ...]:
    """Which table `taskyard_outbox` is on this connection; OutboxMissing when there is none."""
    row = await conn.fetchrow(IDENTITY)
    if row["oid"] is None:
        raise OutboxMissing(f"there is no table {TABLE} in database {row[0]!r}")
    return tuple(row)


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
    """Release every claim of rows that have not failed; how many."""
    status: str = await conn.execute(RELEASE)
    return int(status.split()[-1])
