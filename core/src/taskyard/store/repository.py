"""Reads and direct writes against PostgreSQL, by noun. With the persister, the only code that talks
to the database; every query here is scoped by tenant_id where the table has one."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import asyncpg
import orjson

from taskyard.domain.auth import Principal, Role, hash_token, new_token
from taskyard.domain.flow import Flow
from taskyard.domain.runs import EMPTY_METADATA, Run, SharedOptions
from taskyard.errors import Conflict
from taskyard.store.rows import (
    DURABLE_ENTRY,
    NEW_RUN,
    PUSHED_EVENT,
    RATE_USAGE,
    RUN_EVENT,
    RUN_LOG,
    RUN_STATE,
    Row,
)
from taskyard_sdk.models import (
    Attempt,
    ErrorInfo,
    LogLine,
    RunEvent,
    RunKind,
    RunStatus,
    RunSummary,
    RunView,
    TaskOptions,
)


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


REVOKED_CHANNEL = "taskyard_token_revoked"  # NOTIFY payload: the revoked token's id


class TenantExists(Exception):
    """A tenant with this name already exists."""


class Repository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- tenants ---------------------------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) "
                "RETURNING tenant_id, name, created_at",
                uuid.uuid4(),
                name,
            )
        except asyncpg.UniqueViolationError:
            raise TenantExists(f"a tenant named {name!r} already exists") from None
        assert row is not None
        return Tenant(**dict(row))

    async def tenant_named(self, name: str) -> Tenant | None:
        row = await self.pool.fetchrow(
            "SELECT tenant_id, name, created_at FROM tenants WHERE name = $1", name
        )
        return Tenant(**dict(row)) if row else None

    async def get_tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        row = await self.pool.fetchrow(
            "SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = $1", tenant_id
        )
        return Tenant(**dict(row)) if row else None

    async def count_tenants(self) -> int:
        count = await self.pool.fetchval("SELECT count(*) FROM tenants")
        return int(count)

    # -- tokens ----------------------------------------------------------------------------------

    async def create_token(
        self, tenant_id: uuid.UUID, role: Role, name: str = ""
    ) -> tuple[TokenInfo, str]:
        """A new token for the tenant; returns its record and the secret, which is never stored."""
        secret = new_token()
        row = await self.pool.fetchrow(
            "INSERT INTO api_tokens (tenant_id, token_id, name, role, token_hash) "
            "VALUES ($1, $2, $3, $4, $5) "
            "RETURNING token_id, tenant_id, name, role, created_at, revoked_at",
            tenant_id,
            uuid.uuid4(),
            name,
            role.value,
            hash_token(secret),
        )
        assert row is not None
        return _token_info(row), secret

    async def authenticate_hash(self, token_hash: bytes) -> Principal | None:
        """The principal of a live token, by the hash of its secret (see store/token_cache.py)."""
        row = await self.pool.fetchrow(
            "SELECT t.tenant_id, n.name AS tenant_name, t.token_id, t.role "
            "FROM api_tokens t JOIN tenants n USING (tenant_id) "
            "WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
            token_hash,
        )
        if row is None:
            return None
        # Ids as the standard library's UUIDs: they go into every row a tenant writes, and the
        # JSON encoder knows those natively.
        return Principal(
            uuid.UUID(bytes=row["tenant_id"].bytes),
            row["tenant_name"],
            uuid.UUID(bytes=row["token_id"].bytes),
            Role(row["role"]),
        )

    async def list_tokens(self, tenant_id: uuid.UUID) -> list[TokenInfo]:
        rows = await self.pool.fetch(
            "SELECT token_id, tenant_id, name, role, created_at, revoked_at FROM api_tokens "
            "WHERE tenant_id = $1 ORDER BY created_at, token_id",
            tenant_id,
        )
        return [_token_info(row) for row in rows]

    async def revoke_token(
        self,
        token_id: uuid.UUID,
        tenant_id: uuid.UUID | None = None,
        *,
        keep_an_admin: bool = False,
    ) -> TokenInfo | None:
        """Revoke a token (of one tenant when given); None when there is no such token. Every
        engine listening on REVOKED_CHANNEL is told when the revocation commits.
        `keep_an_admin`: refuse (409) to revoke the tenant's last admin token, which would
        leave it with no way to manage itself but the CLI."""
        async with self.pool.acquire() as conn, conn.transaction():
            if keep_an_admin:
                # The tenant's row serialises its revocations: two at once cannot both see
                # another admin token left.
                await conn.execute(
                    "SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_id
                )
                last = await conn.fetchval(
                    "SELECT count(*) = 1 FROM api_tokens WHERE tenant_id = $2 AND role = "
                    "'admin' AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM api_tokens WHERE "
                    "token_id = $1 AND tenant_id = $2 AND role = 'admin' AND revoked_at IS NULL)",
                    token_id,
                    tenant_id,
                )
                if last:
                    raise Conflict(
                        f"token {token_id} is the tenant's last admin token; create "
                        f"another admin token before revoking it"
                    )
            row = await conn.fetchrow(
                "WITH revoked AS (UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE token_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) "
                "RETURNING token_id, tenant_id, name, role, created_at, revoked_at) "
                "SELECT revoked.*, pg_notify($3, token_id::text) FROM revoked",
                token_id,
                tenant_id,
                REVOKED_CHANNEL,
            )
        return _token_info(row) if row else None

    async def revoked_among(self, token_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        """Which of these tokens are revoked."""
        if not token_ids:
            return []
        rows = await self.pool.fetch(
            "SELECT token_id FROM api_tokens WHERE token_id = ANY($1) AND revoked_at IS NOT NULL",
            token_ids,
        )
        return [row["token_id"] for row in rows]


def _token_info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        row["token_id"],
        row["tenant_id"],
        row["name"],
        Role(row["role"]),
        row["created_at"],
        row["revoked_at"],
    )


# -- batched writes (called by the persister, one transaction per batch) ---------------------------


@dataclass(slots=True)
class WriteBatch:
    """Everything one flush writes: rows of the kinds in store/rows.py."""

    batch_id: uuid.UUID
    new_runs: list[Row]  # NEW_RUN rows
    run_states: dict[uuid.UUID, Row]  # RUN_STATE rows by run id (ids are unique across tenants)
    events: list[Row]  # RUN_EVENT rows
    logs: list[Row]  # RUN_LOG rows
    definitions: dict[tuple[uuid.UUID, str], str]  # (tenant_id, name) -> options JSON
    pushed_events: list[Row] = field(default_factory=list)  # PUSHED_EVENT rows
    # RATE_USAGE rows by (tenant_id, key): the latest wins
    rate_usage: dict[tuple[uuid.UUID, str], Row] = field(default_factory=dict)
    # DURABLE_ENTRY rows by (tenant_id, run_id, position)
    durable: dict[tuple[uuid.UUID, uuid.UUID, int], Row] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.new_runs)
            + len(self.run_states)
            + len(self.events)
            + len(self.logs)
            + len(self.definitions)
            + len(self.pushed_events)
            + len(self.rate_usage)
            + len(self.durable)
        )

    def halves(self) -> tuple[WriteBatch, WriteBatch]:
        """The rows in two batches of about half each (in order; new ids): to find, by
        halving, the rows Postgres refuses in a batch it refuses."""
        kinds = [
            ("new_runs", self.new_runs),
            ("run_states", list(self.run_states.items())),
            ("events", self.events),
            ("logs", self.logs),
            ("definitions", list(self.definitions.items())),
            ("pushed_events", self.pushed_events),
            ("rate_usage", list(self.rate_usage.items())),
            ("durable", list(self.durable.items())),
        ]
        rows = [(kind, row) for kind, items in kinds for row in items]
        middle = len(rows) // 2
        return _batch_of(rows[:middle]), _batch_of(rows[middle:])

    def merge(self, later: WriteBatch) -> None:
        self.new_runs.extend(later.new_runs)
        self.run_states.update(later.run_states)
        self.events.extend(later.events)
        self.logs.extend(later.logs)
        self.definitions.update(later.definitions)
        self.pushed_events.extend(later.pushed_events)
        self.rate_usage.update(later.rate_usage)
        self.durable.update(later.durable)


@dataclass(frozen=True, slots=True)
class Inserted:
    """What became of one new run: inserted, or an existing run with the same idempotency key."""

    run_id: uuid.UUID
    created: bool
    status: str


def _row_set(columns: str, *, joined: bool = False) -> str:
    """The rows of one jsonb parameter ($1) as a row set: a JSON array of rows, each a JSON
    array of values in the order of `columns` ("name type, ..."). Times travel as epoch seconds,
    JSON values as themselves (a JSON null is SQL NULL). One parameter rather than one array per
    column: asyncpg checks every element of an array parameter through the ABC machinery, which
    cost more than the rest of a small flush.

    A row set `joined` to a table is unnested from an array: the planner expects 10 rows of
    unnest but 100 of jsonb_array_elements, for which a small or freshly grown table's seq scan
    and a hash join look cheaper than index lookups (4 ms instead of 0.2 for one run's state)."""
    expressions = []
    for index, column in enumerate(columns.split(",")):
        name, kind = column.split()
        if kind == "text":
            value = f"r->>{index}"
        elif kind == "jsonb":
            value = f"nullif(r->{index}, 'null')"
        elif kind == "timestamptz":
            value = f"to_timestamp((r->>{index})::float8)"
        else:
            value = f"(r->>{index})::{kind}"
        expressions.append(f"{value} AS {name}")
    rows = "jsonb_array_elements($1::jsonb)"
    if joined:
        rows = f"unnest(ARRAY(SELECT {rows}))"
    return f"SELECT {', '.join(expressions)} FROM {rows} AS r"


def _insert(table: str, columns: str, then: str = "") -> str:
    """INSERT of the rows of $1 (see _row_set) into `table`, followed by `then`."""
    names = ", ".join(column.split()[0] for column in columns.split(","))
    return f"INSERT INTO {table} ({names})\n{_row_set(columns)}\n{then}"


_INSERT_RUNS = _insert("runs", NEW_RUN.sql, "ON CONFLICT DO NOTHING RETURNING run_id")

_EXISTING_BY_ID = """
SELECT r.run_id, r.status
FROM unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, run_id)
JOIN runs r ON r.tenant_id = k.tenant_id AND r.run_id = k.run_id
"""

_EXISTING_BY_KEY = """
SELECT k.tenant_id, k.key, r.run_id, r.status
FROM unnest($1::uuid[], $2::text[]) AS k(tenant_id, key)
JOIN runs r ON r.tenant_id = k.tenant_id AND r.idempotency_key = k.key
"""

_EXISTING_BY_STEP = """
SELECT k.tenant_id, k.workflow_run_id, k.step, r.run_id, r.status
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, workflow_run_id, step)
JOIN runs r ON r.tenant_id = k.tenant_id AND r.workflow_run_id = k.workflow_run_id
           AND r.step = k.step
"""

_UPDATE_RUNS = f"""
UPDATE runs r SET status = t.status, attempt = t.attempt, worker_id = t.worker_id,
       queued_at = t.queued_at, retry_at = t.retry_at, assigned_at = t.assigned_at,
       started_at = t.started_at, finished_at = t.finished_at, output = t.output,
       error = t.error
FROM ({_row_set(RUN_STATE.sql, joined=True)}) AS t
WHERE r.tenant_id = t.tenant_id AND r.run_id = t.run_id
"""

_INSERT_EVENTS = _insert("run_events", RUN_EVENT.sql)

_INSERT_PUSHED_EVENTS = _insert("events", PUSHED_EVENT.sql)

_INSERT_LOGS = _insert("run_logs", RUN_LOG.sql)

_UPSERT_RATE_USAGE = f"""
INSERT INTO rate_limits (tenant_id, key, "limit", duration, configured, usage, updated_at)
SELECT t.tenant_id, t.key, t.lim, t.duration, t.configured, t.usage, now()
FROM ({_row_set(RATE_USAGE.sql)}) AS t
ON CONFLICT (tenant_id, key) DO UPDATE
SET usage = CASE WHEN rate_limits.duration = excluded.duration THEN excluded.usage
                 ELSE rate_limits.usage END,
    -- a configured limit is the API's to change; usage written behind never reverts it
    "limit" = CASE WHEN rate_limits.configured THEN rate_limits."limit" ELSE excluded."limit" END,
    duration = CASE WHEN rate_limits.configured THEN rate_limits.duration
                    ELSE excluded.duration END,
    updated_at = now()
"""

_DELETE_IDLE_BUCKETS = f"""
DELETE FROM rate_limits r USING ({_row_set("tenant_id uuid, key text", joined=True)}) AS t
WHERE r.tenant_id = t.tenant_id AND r.key = t.key AND NOT r.configured
"""

_UPSERT_DURABLE = _insert(
    "durable_log",
    DURABLE_ENTRY.sql,
    """
ON CONFLICT (tenant_id, run_id, position) DO UPDATE
SET done = excluded.done, result = excluded.result, wait = excluded.wait,
    finished_at = excluded.finished_at
WHERE NOT durable_log.done""",
)

_UPSERT_DEFINITIONS = f"""
INSERT INTO task_definitions (tenant_id, name, options, updated_at)
SELECT t.tenant_id, t.name, t.options, now()
FROM ({_row_set("tenant_id uuid, name text, options jsonb")}) AS t
ON CONFLICT (tenant_id, name) DO UPDATE SET options = excluded.options, updated_at = now()
"""


def _columns(rows: Iterable[Row], width: int) -> list[tuple[object, ...]]:
    """Rows turned into one array per column (for `unnest`), transposed in C by zip."""
    columns = list(zip(*rows, strict=True))
    return columns or [() for _ in range(width)]


async def _existing_runs(
    conn: asyncpg.Connection, refused: list[Row]
) -> dict[uuid.UUID, asyncpg.Record]:
    """For new runs that conflicted: the run that was there first (itself, written by an
    earlier try of the same batch; or the run with the same idempotency key, or the same step of
    the same workflow run), by the id the new run would have had."""
    tenant, run, key = NEW_RUN.tenant_id, NEW_RUN.run_id, NEW_RUN.idempotency_key
    parent, step = NEW_RUN.workflow_run_id, NEW_RUN.step
    found: dict[uuid.UUID, asyncpg.Record] = {
        row["run_id"]: row
        for row in await conn.fetch(
            _EXISTING_BY_ID, *_columns(((row[tenant], row[run]) for row in refused), 2)
        )
    }
    keyed = [row for row in refused if row[key] is not None and row[run] not in found]
    if keyed:
        by_key = {
            (r["tenant_id"], r["key"]): r
            for r in await conn.fetch(
                _EXISTING_BY_KEY, *_columns(((row[tenant], row[key]) for row in keyed), 2)
            )
        }
        for row in keyed:
            if (row[tenant], row[key]) in by_key:
                found[row[run]] = by_key[(row[tenant], row[key])]
    steps = [row for row in refused if row[parent] is not None and row[run] not in found]
    if steps:
        by_step = {
            (r["tenant_id"], r["workflow_run_id"], r["step"]): r
            for r in await conn.fetch(
                _EXISTING_BY_STEP,
                *_columns(((row[tenant], row[parent], row[step]) for row in steps), 3),
            )
        }
        for row in steps:
            if (row[tenant], row[parent], row[step]) in by_step:
                found[row[run]] = by_step[(row[tenant], row[parent], row[step])]
    return found


_MARK_BATCH = """
UPDATE persister_lanes SET last_batch = $3 WHERE node_id = $1 AND lane = $2
"""


async def batch_committed(
    conn: asyncpg.Connection, node_id: uuid.UUID, lane: str, batch_id: uuid.UUID
) -> bool:
    """Whether this node's lane last committed `batch_id` (a retry must then be skipped)."""
    last = await conn.fetchval(
        "SELECT last_batch FROM persister_lanes WHERE node_id = $1 AND lane = $2", node_id, lane
    )
    return bool(last == batch_id)


def _statements(batch: WriteBatch) -> list[tuple[str, str, list[Any]]]:
    """The batch as (name, SQL, arguments) per table touched; new runs first, if any."""
    statements: list[tuple[str, str, list[Any]]] = []
    if batch.new_runs:
        statements.append(("new_runs", _INSERT_RUNS, [batch.new_runs]))
    if batch.pushed_events:
        statements.append(("pushed_events", _INSERT_PUSHED_EVENTS, [batch.pushed_events]))
    if batch.run_states:
        statements.append(("run_states", _UPDATE_RUNS, [list(batch.run_states.values())]))
    if batch.events:
        statements.append(("events", _INSERT_EVENTS, [batch.events]))
    if batch.logs:
        statements.append(("logs", _INSERT_LOGS, [batch.logs]))
    if batch.definitions:
        statements.append(
            (
                "definitions",
                _UPSERT_DEFINITIONS,
                [
                    [
                        (tenant_id, name, orjson.Fragment(options))
                        for (tenant_id, name), options in batch.definitions.items()
                    ]
                ],
            )
        )
    if batch.durable:
        statements.append(("durable", _UPSERT_DURABLE, [list(batch.durable.values())]))
    if batch.rate_usage:
        rows = list(batch.rate_usage.values())
        configured, usage = RATE_USAGE.configured, RATE_USAGE.usage
        kept = [
            (*row[:usage], orjson.Fragment(row[usage]))  # usage is the last column
            for row in rows
            if row[configured] or row[usage] != "[]"
        ]
        idle = [
            (row[RATE_USAGE.tenant_id], row[RATE_USAGE.key])
            for row in rows
            if not row[configured] and row[usage] == "[]"
        ]
        if kept:
            statements.append(("rate_usage", _UPSERT_RATE_USAGE, [kept]))
        if idle:
            statements.append(("idle_buckets", _DELETE_IDLE_BUCKETS, [idle]))
    return statements


_PARAMETER = re.compile(r"\$(\d+)")


@cache
def _one_statement(parts: tuple[tuple[str, str], ...]) -> str:
    """The parts' statements as data-modifying CTEs of one statement (parameters renumbered),
    selecting the ids of the runs inserted. One statement commits on its own: the whole batch
    costs one round trip."""
    ctes, offset = [], 0
    for name, sql in parts:

        def shift(match: re.Match[str], by: int = offset) -> str:
            return f"${int(match.group(1)) + by}"

        ctes.append(f"{name} AS ({_PARAMETER.sub(shift, sql.strip())})")
        offset += max(int(n) for n in _PARAMETER.findall(sql))
    select = (
        "SELECT run_id FROM new_runs"
        if parts[0][0] == "new_runs"
        else "SELECT NULL::uuid AS run_id WHERE false"
    )
    return "WITH " + ",\n".join(ctes) + "\n" + select


def _batch_of(rows: list[tuple[str, Any]]) -> WriteBatch:
    batch = WriteBatch(uuid.uuid4(), [], {}, [], [], {})
    for kind, row in rows:
        held = getattr(batch, kind)
        if isinstance(held, dict):
            key, value = row
            held[key] = value
        else:
            held.append(row)
    return batch


async def write_batch(
    conn: asyncpg.Connection, batch: WriteBatch, mark: tuple[uuid.UUID, str] | None
) -> dict[uuid.UUID, Inserted]:
    """Write a batch atomically, marked committed on the (node, lane) of `mark`; returns what
    became of each new run. A batch of new runs alone needs no mark: written again, it finds
    its own runs (ids are never reused).

    Usually the batch is one statement (one round trip, committed on its own). The statements
    of a CTE all see the database as it was before the statement, so a run inserted and updated
    in the same batch would lose its update: such a batch is written statement by statement in
    a transaction instead."""
    statements = _statements(batch)
    if mark is not None:
        statements.append(("mark", _MARK_BATCH, [*mark, batch.batch_id]))
    new_run = NEW_RUN.run_id
    if batch.new_runs and not batch.run_states.keys().isdisjoint(
        row[new_run] for row in batch.new_runs
    ):
        async with conn.transaction():
            created = set()
            for name, sql, args in statements:
                if name == "new_runs":
                    created = {row["run_id"] for row in await conn.fetch(sql, *args)}
                else:
                    await conn.execute(sql, *args)
    else:
        query = _one_statement(tuple((name, sql) for name, sql, _ in statements))
        arguments = [arg for _, _, args in statements for arg in args]
        created = {row["run_id"] for row in await conn.fetch(query, *arguments)}
    return await _outcomes(conn, batch.new_runs, created)


async def written_before(conn: asyncpg.Connection, batch: WriteBatch) -> dict[uuid.UUID, Inserted]:
    """What became of the new runs of a batch that committed before its answer was lost."""
    return await _outcomes(conn, batch.new_runs, set())


async def _outcomes(
    conn: asyncpg.Connection, new_runs: list[Row], created: set[uuid.UUID]
) -> dict[uuid.UUID, Inserted]:
    """Inserted, or (for a conflict) the run that was there first: read after the commit, since
    what a new run conflicted with is committed by then."""
    run, status = NEW_RUN.run_id, NEW_RUN.status
    refused = [row for row in new_runs if row[run] not in created]
    existing = await _existing_runs(conn, refused) if refused else {}
    inserted: dict[uuid.UUID, Inserted] = {}
    for row in new_runs:
        run_id = row[run]
        assert isinstance(run_id, uuid.UUID)
        if run_id in created:
            inserted[run_id] = Inserted(run_id, True, str(row[status]))
        else:
            match = existing.get(run_id)
            if match is None:
                raise RuntimeError(f"run {run_id} was neither inserted nor found by key")
            inserted[run_id] = Inserted(match["run_id"], match["run_id"] == run_id, match["status"])
    return inserted


LANES = ("ordered",)  # the lanes that mark their batches (see taskyard.store.persister)


async def register_node(pool: asyncpg.Pool, node_id: uuid.UUID) -> None:
    await pool.execute("DELETE FROM engine_nodes WHERE started_at < now() - interval '7 days'")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO engine_nodes (node_id) VALUES ($1)", node_id)
        await conn.execute(
            "INSERT INTO persister_lanes (node_id, lane) SELECT $1, unnest($2::text[])",
            node_id,
            list(LANES),
        )


# -- runs: reads -----------------------------------------------------------------------------------

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
             AND c.parent_run_id = r.run_id ORDER BY c.run_id LIMIT 10000) AS children,
       (SELECT coalesce(json_agg(json_build_object(
                   'at', extract(epoch FROM e.at), 'attempt', e.attempt, 'type', e.type,
                   'worker_id', e.worker_id, 'detail', e.detail) ORDER BY e.seq), '[]')
        FROM run_events e WHERE e.tenant_id = r.tenant_id AND e.run_id = r.run_id)
       AS stored_events
FROM runs r WHERE r.tenant_id = $1 AND r.run_id = $2
"""

_TERMINAL_EVENTS = {"succeeded", "failed", "timed_out", "cancelled"}


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

    async def active_queues(self) -> list[tuple[uuid.UUID, str]]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT tenant_id, queue FROM runs WHERE kind = 'task' AND "
            "(status IN ('queued', 'assigned', 'running') OR (status = 'pending' "
            "AND workflow_run_id IS NULL))"
        )
        return [(row["tenant_id"], row["queue"]) for row in rows]

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

    async def load_run(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> Run | None:
        row = await self.pool.fetchrow(
            f"SELECT {_RUN_STATE_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = $2",
            tenant_id,
            run_id,
        )
        return self._run_of(row) if row else None

    async def existing(self, tenant_id: uuid.UUID, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these runs the tenant has."""
        rows = await self.pool.fetch(
            "SELECT run_id FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::uuid[])",
            tenant_id,
            run_ids,
        )
        return {row["run_id"] for row in rows}

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
        view.attempts = _attempts(_history(row, row["stored_events"]))
        view.children = list(row["children"])
        if view.kind is RunKind.WORKFLOW:
            view.steps = [
                RunSummary.model_validate(dict(row))
                for row in await self.pool.fetch(
                    f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE tenant_id = $1 "
                    "AND workflow_run_id = $2 ORDER BY run_id",
                    tenant_id,
                    run_id,
                )
            ]
        return view

    async def active_children(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[uuid.UUID]:
        """Unfinished runs spawned by a run, and the unfinished steps of a workflow run."""
        rows = await self.pool.fetch(
            "SELECT run_id FROM runs WHERE tenant_id = $1 AND parent_run_id = $2 "
            "AND status IN ('pending', 'queued', 'assigned', 'running') "
            "UNION SELECT run_id FROM runs WHERE tenant_id = $1 AND workflow_run_id = $2 "
            "AND status IN ('pending', 'queued', 'assigned', 'running')",
            tenant_id,
            run_id,
        )
        return [row["run_id"] for row in rows]

    async def list_runs(
        self,
        tenant_id: uuid.UUID,
        *,
        statuses: list[str],
        tasks: list[str],
        since: datetime | None,
        until: datetime | None,
        metadata: dict[str, str],
        before: uuid.UUID | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Newest first. `before` is the cursor: the last run_id of the previous page."""
        clauses = ["tenant_id = $1"]
        args: list[object] = [tenant_id]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if statuses:
            clauses.append(f"status = ANY({arg(statuses)}::text[])")
        if tasks:
            clauses.append(f"task = ANY({arg(tasks)}::text[])")
        if since is not None:
            clauses.append(f"run_id >= {arg(_uuid7_bound(since, upper=False))}")
            clauses.append(f"created_at >= {arg(since)}")
        if until is not None:
            clauses.append(f"run_id <= {arg(_uuid7_bound(until, upper=True))}")
            clauses.append(f"created_at < {arg(until)}")
        if metadata:
            clauses.append(f"metadata @> {arg(metadata)}::jsonb")
        if before is not None:
            clauses.append(f"run_id < {arg(before)}")
        query = (
            f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE {' AND '.join(clauses)} "
            f"ORDER BY run_id DESC LIMIT {arg(limit)}"
        )
        rows = await self.pool.fetch(query, *args)
        return [dict(row) for row in rows]  # the shape of RunSummary

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
        return _history(run, stored)

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


def _history(run: Mapping[str, Any], stored: Iterable[Mapping[str, Any]]) -> list[RunEvent]:
    """A run's events: those stored (rows, or their JSON with `at` in epoch seconds) and the
    current attempt's timeline from its row."""
    events = [RunEvent(at=run["created_at"], attempt=1, type="queued")]
    for row in stored:
        detail = row["detail"]
        if row["type"] in _TERMINAL_EVENTS and detail is not None and "assigned_at" in detail:
            # An earlier attempt's outcome, with the timeline its row no longer holds.
            for kind in ("assigned", "started"):
                if detail[f"{kind}_at"] is not None:
                    events.append(
                        RunEvent(
                            at=_utc(detail[f"{kind}_at"]),
                            attempt=row["attempt"],
                            type=kind,
                            worker_id=row["worker_id"],
                        )
                    )
            detail = detail["error"]
        events.append(
            RunEvent(
                at=row["at"],
                attempt=row["attempt"],
                type=row["type"],
                worker_id=row["worker_id"],
                detail=detail,
            )
        )
    attempt, worker = run["attempt"], run["worker_id"]
    if run["assigned_at"] is not None:
        events.append(
            RunEvent(at=run["assigned_at"], attempt=attempt, type="assigned", worker_id=worker)
        )
    if run["started_at"] is not None:
        events.append(
            RunEvent(at=run["started_at"], attempt=attempt, type="started", worker_id=worker)
        )
    if run["status"] in _TERMINAL_EVENTS and run["finished_at"] is not None:
        events.append(
            RunEvent(
                at=run["finished_at"],
                attempt=attempt,
                type=run["status"],
                worker_id=worker,
                detail=run["error"],
            )
        )
    events.sort(key=lambda event: event.at)  # stable: same-time events keep their order
    return events


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _attempts(events: list[RunEvent]) -> list[Attempt]:
    """Each attempt's timeline, from the run's events."""
    attempts: dict[int, Attempt] = {}
    for event in events:
        if event.type in ("queued", "replayed", "retry_scheduled", "requeued", "timeout_refreshed"):
            continue
        attempt = attempts.setdefault(
            event.attempt, Attempt(attempt=event.attempt, status=RunStatus.QUEUED)
        )
        if event.type in ("assigned", "reattached"):
            attempt.status = RunStatus.ASSIGNED
            attempt.worker_id = event.worker_id
            attempt.assigned_at = event.at
            if event.type == "reattached":
                attempt.status, attempt.started_at = RunStatus.RUNNING, event.at
        elif event.type == "started":
            attempt.status = RunStatus.RUNNING
            attempt.started_at = event.at
        elif event.type in _TERMINAL_EVENTS:
            attempt.status = RunStatus(event.type)
            attempt.finished_at = event.at
            if event.detail and event.type != "succeeded":
                attempt.error = ErrorInfo.model_validate(event.detail)
    return [attempts[number] for number in sorted(attempts)]
