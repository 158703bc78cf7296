"""The SQL of a write batch (store/batch.py): one statement per table it touches, each taking its
rows as one jsonb parameter, and the composition of those statements into one."""

from __future__ import annotations

import re
from functools import cache

from taskyard.store.rows import (
    DURABLE_ENTRY,
    NEW_RUN,
    PUSHED_EVENT,
    RATE_USAGE,
    RUN_EVENT,
    RUN_LOG,
    RUN_STATE,
)
from taskyard_sdk.outbox import TABLE as OUTBOX_TABLE


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


def _names(columns: str) -> str:
    return ", ".join(column.split()[0] for column in columns.split(","))


def _insert(table: str, columns: str, then: str = "") -> str:
    """INSERT of the rows of $1 (see _row_set) into `table`, followed by `then`."""
    return f"INSERT INTO {table} ({_names(columns)})\n{_row_set(columns)}\n{then}"


INSERT_RUNS = _insert("runs", NEW_RUN.sql, "ON CONFLICT DO NOTHING RETURNING run_id")

# Idempotency keys are a table of their own (a partitioned `runs` cannot hold a unique index
# without run_id): a keyed run is inserted only when its key was, in the same statement (see
# one_statement), so two triggers with one key cannot both win.
INSERT_KEYS = _insert(
    "run_keys", "tenant_id uuid, key text, run_id uuid", "ON CONFLICT DO NOTHING RETURNING run_id"
)
INSERT_KEYED_RUNS = f"""
INSERT INTO runs ({_names(NEW_RUN.sql)})
SELECT * FROM ({_row_set(NEW_RUN.sql)}) AS n
WHERE n.idempotency_key IS NULL OR n.run_id IN (SELECT run_id FROM new_keys)
ON CONFLICT DO NOTHING RETURNING run_id
"""

EXISTING_BY_ID = """
SELECT r.run_id, r.status
FROM unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, run_id)
JOIN runs r ON r.tenant_id = k.tenant_id AND r.run_id = k.run_id
"""

EXISTING_BY_KEY = """
SELECT k.tenant_id, k.key, r.run_id, r.status
FROM unnest($1::uuid[], $2::text[]) AS k(tenant_id, key)
JOIN run_keys rk ON rk.tenant_id = k.tenant_id AND rk.key = k.key
JOIN runs r ON r.tenant_id = rk.tenant_id AND r.run_id = rk.run_id
"""

EXISTING_BY_STEP = """
SELECT k.tenant_id, k.workflow_run_id, k.step, r.run_id, r.status
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, workflow_run_id, step)
JOIN runs r ON r.tenant_id = k.tenant_id AND r.workflow_run_id = k.workflow_run_id
           AND r.step = k.step
"""

UPDATE_RUNS = f"""
UPDATE runs r SET status = t.status, attempt = t.attempt, worker_id = t.worker_id,
       queued_at = t.queued_at, retry_at = t.retry_at, assigned_at = t.assigned_at,
       started_at = t.started_at, finished_at = t.finished_at, output = t.output,
       error = t.error
FROM ({_row_set(RUN_STATE.sql, joined=True)}) AS t
WHERE r.tenant_id = t.tenant_id AND r.run_id = t.run_id
"""

INSERT_EVENTS = _insert("run_events", RUN_EVENT.sql)

# An event of an outbox may be pushed again after a crash (its id is the row's): the first stays.
INSERT_PUSHED_EVENTS = _insert("events", PUSHED_EVENT.sql, "ON CONFLICT DO NOTHING")

INSERT_LOGS = _insert("run_logs", RUN_LOG.sql)

UPSERT_RATE_USAGE = f"""
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

DELETE_IDLE_BUCKETS = f"""
DELETE FROM rate_limits r USING ({_row_set("tenant_id uuid, key text", joined=True)}) AS t
WHERE r.tenant_id = t.tenant_id AND r.key = t.key AND NOT r.configured
"""

UPSERT_DURABLE = _insert(
    "durable_log",
    DURABLE_ENTRY.sql,
    """
ON CONFLICT (tenant_id, run_id, position) DO UPDATE
SET done = excluded.done, result = excluded.result, wait = excluded.wait,
    finished_at = excluded.finished_at
WHERE NOT durable_log.done""",
)

UPSERT_DEFINITIONS = f"""
INSERT INTO task_definitions (tenant_id, name, options, updated_at)
SELECT t.tenant_id, t.name, t.options, now()
FROM ({_row_set("tenant_id uuid, name text, options jsonb")}) AS t
ON CONFLICT (tenant_id, name) DO UPDATE SET options = excluded.options, updated_at = now()
"""


# Rows of the engine's own outbox, deleted by the statement that inserts their runs and events.
DELETE_OUTBOX_ROWS = f"""
DELETE FROM {OUTBOX_TABLE} o USING ({_row_set("id uuid", joined=True)}) AS d WHERE o.id = d.id
"""


MARK_BATCH = """
UPDATE persister_lanes SET last_batch = $3 WHERE node_id = $1 AND lane = $2
"""


# The fence of a batch (see migrations/0012_cluster.sql): the epochs of the leases it is written
# under, checked and locked until it commits.
FENCE = "SELECT taskyard_fence($1::uuid, $2::uuid[], $3::bigint[]) AS ok"
FENCE_SQLSTATE = "TY001"

_PARAMETER = re.compile(r"\$(\d+)")


@cache
def one_statement(parts: tuple[tuple[str, str], ...]) -> str:
    """The parts' statements as data-modifying CTEs of one statement (parameters renumbered),
    selecting the ids of the runs inserted. One statement commits on its own: the whole batch
    costs one round trip."""
    ctes, offset = [], 0
    for name, sql in parts:

        def shift(match: re.Match[str], by: int = offset) -> str:
            return f"${int(match.group(1)) + by}"

        ctes.append(f"{name} AS ({_PARAMETER.sub(shift, sql.strip())})")
        offset += max(int(n) for n in _PARAMETER.findall(sql))
    names = [name for name, _ in parts]
    if "fence" in names:
        # The fence is the outer side of the answer's join, so it is always evaluated; if it
        # raises, the whole statement (every CTE's writes with it) is undone.
        select = (
            "SELECT n.run_id FROM fence CROSS JOIN LATERAL "
            "(SELECT run_id FROM new_runs WHERE fence.ok) AS n"
            if "new_runs" in names
            else "SELECT NULL::uuid AS run_id FROM fence WHERE NOT fence.ok"
        )
    else:
        select = (
            "SELECT run_id FROM new_runs"
            if "new_runs" in names
            else "SELECT NULL::uuid AS run_id WHERE false"
        )
    return "WITH " + ",\n".join(ctes) + "\n" + select
