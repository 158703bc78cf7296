"""The write batch: everything one flush of the persister writes, and the code that writes it
(its SQL is in store/batch_sql.py). A batch is written as one statement where it can be, and what
became of each new run it inserts is read back."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import orjson

from taskyard.store.batch_sql import (
    DELETE_IDLE_BUCKETS,
    DELETE_OUTBOX_ROWS,
    EXISTING_BY_ID,
    EXISTING_BY_KEY,
    EXISTING_BY_STEP,
    FENCE,
    FENCE_SQLSTATE,
    INSERT_EVENTS,
    INSERT_KEYED_RUNS,
    INSERT_KEYS,
    INSERT_LOGS,
    INSERT_PUSHED_EVENTS,
    INSERT_RUNS,
    MARK_BATCH,
    UPDATE_RUNS,
    UPSERT_DEFINITIONS,
    UPSERT_DURABLE,
    UPSERT_RATE_USAGE,
    one_statement,
)
from taskyard.store.rows import NEW_RUN, PUSHED_EVENT, RATE_USAGE, Row

T = TypeVar("T")

# The kinds of rows a batch holds (its fields), in the order a batch is halved.
_KINDS = (
    "new_runs",
    "run_states",
    "events",
    "logs",
    "definitions",
    "pushed_events",
    "rate_usage",
    "durable",
)


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
    # Ids of new runs and pushed events that are rows of the engine's own outbox: each row is
    # deleted by the statement that inserts its run or event, so a halved batch keeps the two
    # together.
    from_outbox: set[uuid.UUID] = field(default_factory=set)
    # (node, tenants, their epochs): the leases this batch is written under (see Fence)
    fence: Fence | None = None

    @classmethod
    def empty(cls) -> WriteBatch:
        return cls(uuid.uuid4(), [], {}, [], [], {})

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
        rows = [(kind, row) for kind in _KINDS for row in _rows_of(getattr(self, kind))]
        middle = len(rows) // 2
        first, second = _batch_of(rows[:middle]), _batch_of(rows[middle:])
        first.from_outbox, second.from_outbox = set(self.from_outbox), set(self.from_outbox)
        return first, second

    def describe(self) -> str:
        """Which row a one-row batch holds, for the log (its kind and the ids it starts with)."""
        for kind in _KINDS:
            held = getattr(self, kind)
            if held:
                row = next(iter(held.values() if isinstance(held, dict) else held))
                return f"{kind} {tuple(row[:2])}"  # every kind starts with the tenant and an id
        return "nothing"

    def tenants(self) -> set[uuid.UUID]:
        """The tenants the batch writes for (every kind's rows and keys start with one)."""
        found = {row[0] for row in self.new_runs}
        found.update(row[0] for row in self.run_states.values())
        for rows in (self.events, self.logs, self.pushed_events):
            found.update(row[0] for row in rows)
        for keys in (self.definitions, self.rate_usage, self.durable):
            found.update(key[0] for key in keys)
        return found

    def drop_tenants(self, tenants: set[uuid.UUID]) -> None:
        """Leave out every row of `tenants` (their leases moved on: the new owner decides)."""
        self.new_runs = [row for row in self.new_runs if row[0] not in tenants]
        self.run_states = {k: row for k, row in self.run_states.items() if row[0] not in tenants}
        self.events = [row for row in self.events if row[0] not in tenants]
        self.logs = [row for row in self.logs if row[0] not in tenants]
        self.definitions = {k: v for k, v in self.definitions.items() if k[0] not in tenants}
        self.pushed_events = [row for row in self.pushed_events if row[0] not in tenants]
        self.rate_usage = {k: row for k, row in self.rate_usage.items() if k[0] not in tenants}
        self.durable = {k: row for k, row in self.durable.items() if k[0] not in tenants}

    def merge(self, later: WriteBatch) -> None:
        self.new_runs.extend(later.new_runs)
        self.run_states.update(later.run_states)
        self.events.extend(later.events)
        self.logs.extend(later.logs)
        self.definitions.update(later.definitions)
        self.pushed_events.extend(later.pushed_events)
        self.rate_usage.update(later.rate_usage)
        self.durable.update(later.durable)
        self.from_outbox.update(later.from_outbox)


def _rows_of(held: list[Row] | dict[Any, Row]) -> list[Any]:
    """A kind's rows: a list's own, a dict's as (key, row)."""
    return list(held.items()) if isinstance(held, dict) else held


def _batch_of(rows: list[tuple[str, Any]]) -> WriteBatch:
    batch = WriteBatch.empty()
    for kind, row in rows:
        held = getattr(batch, kind)
        if isinstance(held, dict):
            key, value = row
            held[key] = value
        else:
            held.append(row)
    return batch


@dataclass(frozen=True, slots=True)
class Fence:
    """The leases a batch is written under: Postgres refuses it (taskyard_fence) when a
    tenant's lease is no longer `node`'s at that epoch."""

    node_id: uuid.UUID
    tenants: list[uuid.UUID]
    epochs: list[int]


class LeasesMoved(Exception):
    """Postgres refused a batch: the leases of `tenants` are no longer this node's."""

    def __init__(self, tenants: set[uuid.UUID]) -> None:
        super().__init__(f"the leases of {len(tenants)} tenants moved to another node")
        self.tenants = tenants


@dataclass(frozen=True, slots=True)
class Inserted:
    """What became of one new run: inserted, or an existing run with the same idempotency key."""

    run_id: uuid.UUID
    created: bool
    status: str


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
        statements.append(("mark", MARK_BATCH, [*mark, batch.batch_id]))
    fence = batch.fence
    fenced = [fence.node_id, fence.tenants, fence.epochs] if fence is not None else None
    new_run = NEW_RUN.run_id
    if batch.new_runs and not batch.run_states.keys().isdisjoint(
        row[new_run] for row in batch.new_runs
    ):
        async with conn.transaction():
            if fenced is not None:
                await _fenced(conn.fetchval(FENCE, *fenced))
            created = set()
            keys: list[Any] = []
            for name, sql, args in statements:
                if name == "new_keys":
                    keys = [(name, sql, args)]  # written with the runs it keys, in one statement
                elif name == "new_runs":
                    written = [*keys, (name, sql, args)]
                    query = one_statement(tuple((n, q) for n, q, _ in written))
                    arguments = [arg for _, _, a in written for arg in a]
                    created = {row["run_id"] for row in await conn.fetch(query, *arguments)}
                else:
                    await conn.execute(sql, *args)
    else:
        if fenced is not None:
            statements.append(("fence", FENCE, fenced))
        query = one_statement(tuple((name, sql) for name, sql, _ in statements))
        arguments = [arg for _, _, args in statements for arg in args]
        created = {row["run_id"] for row in await _fenced(conn.fetch(query, *arguments))}
    return await _outcomes(conn, batch.new_runs, created)


async def _fenced(statement: Awaitable[T]) -> T:
    """A fenced statement's result; LeasesMoved when Postgres refused its fence."""
    try:
        return await statement
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != FENCE_SQLSTATE:
            raise
        detail = getattr(exc, "detail", None) or ""
        raise LeasesMoved({uuid.UUID(tenant) for tenant in detail.split(",") if tenant}) from exc


async def written_before(conn: asyncpg.Connection, batch: WriteBatch) -> dict[uuid.UUID, Inserted]:
    """What became of the new runs of a batch that committed before its answer was lost."""
    return await _outcomes(conn, batch.new_runs, set())


def _statements(batch: WriteBatch) -> list[tuple[str, str, list[Any]]]:
    """The batch as (name, SQL, arguments) per table touched; new runs first, if any."""
    statements: list[tuple[str, str, list[Any]]] = []
    if batch.new_runs:
        key = NEW_RUN.idempotency_key
        keys = [
            (row[NEW_RUN.tenant_id], row[key], row[NEW_RUN.run_id])
            for row in batch.new_runs
            if row[key] is not None
        ]
        if keys:
            statements.append(("new_keys", INSERT_KEYS, [keys]))
            statements.append(("new_runs", INSERT_KEYED_RUNS, [batch.new_runs]))
        else:
            statements.append(("new_runs", INSERT_RUNS, [batch.new_runs]))
    if batch.pushed_events:
        statements.append(("pushed_events", INSERT_PUSHED_EVENTS, [batch.pushed_events]))
    if batch.run_states:
        statements.append(("run_states", UPDATE_RUNS, [list(batch.run_states.values())]))
    if batch.events:
        statements.append(("events", INSERT_EVENTS, [batch.events]))
    if batch.logs:
        statements.append(("logs", INSERT_LOGS, [batch.logs]))
    if batch.definitions:
        statements.append(
            (
                "definitions",
                UPSERT_DEFINITIONS,
                [
                    [
                        (tenant_id, name, orjson.Fragment(options))
                        for (tenant_id, name), options in batch.definitions.items()
                    ]
                ],
            )
        )
    if batch.durable:
        statements.append(("durable", UPSERT_DURABLE, [list(batch.durable.values())]))
    if batch.from_outbox:
        done = [
            [row[NEW_RUN.run_id]]
            for row in batch.new_runs
            if row[NEW_RUN.run_id] in batch.from_outbox
        ]
        done += [
            [row[PUSHED_EVENT.event_id]]
            for row in batch.pushed_events
            if row[PUSHED_EVENT.event_id] in batch.from_outbox
        ]
        if done:
            statements.append(("outbox_done", DELETE_OUTBOX_ROWS, [done]))
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
            statements.append(("rate_usage", UPSERT_RATE_USAGE, [kept]))
        if idle:
            statements.append(("idle_buckets", DELETE_IDLE_BUCKETS, [idle]))
    return statements


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
            EXISTING_BY_ID, *_columns(((row[tenant], row[run]) for row in refused), 2)
        )
    }
    keyed = [row for row in refused if row[key] is not None and row[run] not in found]
    if keyed:
        by_key = {
            (r["tenant_id"], r["key"]): r
            for r in await conn.fetch(
                EXISTING_BY_KEY, *_columns(((row[tenant], row[key]) for row in keyed), 2)
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
                EXISTING_BY_STEP,
                *_columns(((row[tenant], row[parent], row[step]) for row in steps), 3),
            )
        }
        for row in steps:
            if (row[tenant], row[parent], row[step]) in by_step:
                found[row[run]] = by_step[(row[tenant], row[parent], row[step])]
    return found


def _columns(rows: Iterable[Row], width: int) -> list[tuple[object, ...]]:
    """Rows turned into one array per column (for `unnest`), transposed in C by zip."""
    columns = list(zip(*rows, strict=True))
    return columns or [() for _ in range(width)]


async def batch_committed(
    conn: asyncpg.Connection, node_id: uuid.UUID, lane: str, batch_id: uuid.UUID
) -> bool:
    """Whether this node's lane last committed `batch_id` (a retry must then be skipped)."""
    last = await conn.fetchval(
        "SELECT last_batch FROM persister_lanes WHERE node_id = $1 AND lane = $2", node_id, lane
    )
    return bool(last == batch_id)


LANES = ("ordered",)  # the lanes that mark their batches (see taskyard.store.persister)


async def register_node(pool: asyncpg.Pool, node_id: uuid.UUID) -> None:
    """This process's row (its lanes with it); rows of long-dead nodes are swept by the
    cluster (services/cluster.py)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO engine_nodes (node_id) VALUES ($1)", node_id)
        await conn.execute(
            "INSERT INTO persister_lanes (node_id, lane) SELECT $1, unnest($2::text[])",
            node_id,
            list(LANES),
        )
