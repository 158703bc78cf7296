"""Outbox: runs enqueued in the application's own transaction (`task.aio_run_in(conn, ...)`,
asyncpg) and drained by an idle engine process, no worker (the runs stay queued). Two modes:
`app`, the outbox in an application database of its own (`--outbox default=URL`), and `own`, the
engine's own database (`--outbox default`). Each run of each mode has a fresh engine:

- latency: one row per transaction, one transaction after the other at a steady rate; from just
  before COMMIT (the client's clock) to the run's `created_at`, the engine's `time.time()` as it
  builds the run, just before the insert that commits it (one machine, one clock: no polling in
  this figure); and to the moment a reader, querying the runs table every millisecond from the
  commit on, first sees the run committed (an upper bound, which includes the runs' commit);
- throughput: the engine stopped, N rows written with `aio_run_many_in` (1,000 a transaction),
  the engine started again: rows/s from its first run's `created_at` until the outbox is seen
  empty (polled every 20 ms; a row is deleted only once its run has committed), then checked
  against the runs' count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from bench.harness import Setup, engine_setup, fresh_database, percentiles, summary, write_result
from taskyard_sdk import Task, Taskyard
from taskyard_sdk import outbox as sdk_outbox

MODES = {
    "app": "application database (--outbox default=URL)",
    "own": "engine's own database (--outbox default)",
}
WARMUP = 50  # transactions before the latency is measured: connections, caches, plans
CHUNK = 1000  # rows a transaction when the outbox is filled
VISIBLE_POLL = 0.001  # seconds between a reader's looks for a committed run
EMPTY_POLL = 0.02  # seconds between looks at a draining outbox

RUN = "SELECT extract(epoch FROM created_at)::float8 FROM runs WHERE tenant_id = $1 AND run_id = $2"


@contextlib.asynccontextmanager
async def outbox_engine(mode: str) -> AsyncIterator[tuple[Setup, str]]:
    """An engine process draining an outbox into its `default` tenant, and the URL of the
    database that holds that outbox."""
    if mode == "own":
        async with engine_setup("--outbox", "default") as setup:  # it installs the table
            yield setup, setup.db_url
        return
    async with fresh_database() as app_url:
        conn = await asyncpg.connect(app_url)
        try:
            await sdk_outbox.aio_install(conn)
        finally:
            await conn.close()
        async with engine_setup("--outbox", f"default={app_url}") as setup:
            yield setup, app_url


async def tenant_id(db_url: str) -> uuid.UUID:
    conn = await asyncpg.connect(db_url)
    try:
        found: uuid.UUID = await conn.fetchval(
            "SELECT tenant_id FROM tenants WHERE name = 'default'"
        )
        return found
    finally:
        await conn.close()


async def visible(reader: Any, tenant: uuid.UUID, run_id: uuid.UUID, timeout: float = 30) -> float:
    """When the run is first seen committed (time.time())."""
    deadline = time.monotonic() + timeout
    while await reader.fetchval(RUN, tenant, run_id) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} not created within {timeout}s")
        await asyncio.sleep(VISIBLE_POLL)
    return time.time()


async def latency(
    task: Task[int, int], setup: Setup, outbox_url: str, rate: float, count: int
) -> dict[str, dict[str, float]]:
    """`count` transactions of one row each, one after the other, one every 1/rate seconds
    (at once when the previous run took longer to appear)."""
    tenant = await tenant_id(setup.db_url)
    conn = await asyncpg.connect(outbox_url)
    reader = await asyncpg.connect(setup.db_url)
    try:
        samples: list[tuple[uuid.UUID, float, float]] = []  # run id, before COMMIT, seen
        loop = asyncio.get_running_loop()
        due = loop.time()
        for n in range(count):
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time()) + 1 / rate
            transaction = conn.transaction()
            await transaction.start()
            handle = await task.aio_run_in(conn, n)
            committing = time.time()
            await transaction.commit()
            seen = await visible(reader, tenant, handle.run_id)
            samples.append((handle.run_id, committing, seen))
        created = dict(
            await reader.fetch(
                "SELECT run_id, extract(epoch FROM created_at)::float8 FROM runs "
                "WHERE tenant_id = $1 AND run_id = ANY($2::uuid[]) AND status = 'queued'",
                tenant,
                [run_id for run_id, _, _ in samples],
            )
        )
    finally:
        await conn.close()
        await reader.close()
    if len(created) != count:
        raise RuntimeError(f"{count - len(created)} of {count} runs are not queued")
    return {
        "commit_to_created_ms": percentiles([(created[i] - c) * 1000 for i, c, _ in samples]),
        "commit_to_visible_ms": percentiles([(seen - c) * 1000 for _, c, seen in samples]),
    }


async def fill(task: Task[int, int], outbox_url: str, count: int) -> float:
    """`count` rows written with aio_run_many_in, CHUNK a transaction; rows/s."""
    conn = await asyncpg.connect(outbox_url)
    try:
        started = time.perf_counter()
        for first in range(0, count, CHUNK):
            async with conn.transaction():
                await task.aio_run_many_in(conn, list(range(first, min(first + CHUNK, count))))
        return count / (time.perf_counter() - started)
    finally:
        await conn.close()


async def drain(setup: Setup, outbox_url: str, count: int, timeout: float = 600) -> float:
    """Start the (stopped) engine on a filled outbox; rows/s from its first run's created_at
    until the outbox is empty, every row's run committed."""
    tenant = await tenant_id(setup.db_url)
    restarted = time.time()
    setup.engine.start()
    conn = await asyncpg.connect(outbox_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {sdk_outbox.TABLE})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the outbox is not drained after {timeout}s")
            await asyncio.sleep(EMPTY_POLL)
        empty = time.time()
    finally:
        await conn.close()
    conn = await asyncpg.connect(setup.db_url)
    try:
        first, queued = await conn.fetchrow(
            "SELECT min(extract(epoch FROM created_at))::float8, "
            "count(*) FILTER (WHERE status = 'queued') FROM runs "
            "WHERE tenant_id = $1 AND created_at >= to_timestamp($2)",
            tenant,
            restarted,
        )
    finally:
        await conn.close()
    if queued != count:
        raise RuntimeError(f"{queued} runs queued from {count} outbox rows")
    return float(count / (empty - first))


async def one_engine(mode: str, rate: float, seconds: float, tasks: int) -> dict[str, Any]:
    """Latency on a fresh engine, then the engine stopped, its outbox filled, and drained."""
    async with outbox_engine(mode) as (setup, outbox_url):
        ty = Taskyard(setup.engine.url, setup.token)
        try:

            @ty.task(name="noop", schedule_timeout="1h")
            async def noop(n: int) -> int:
                return n

            await latency(noop, setup, outbox_url, rate, WARMUP)
            figures: dict[str, Any] = await latency(
                noop, setup, outbox_url, rate, int(rate * seconds)
            )
            setup.engine.terminate()
            figures["fill_rows_per_s"] = await fill(noop, outbox_url, tasks)
            figures["drain_rows_per_s"] = await drain(setup, outbox_url, tasks)
        finally:
            await ty.aio_close()
    return figures


async def main(modes: list[str], rate: float, seconds: float, tasks: int, runs: int) -> None:
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown modes {', '.join(unknown)}: choose from {', '.join(MODES)}")
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(runs):
        for mode in modes:  # alternated, so that a noisy spell does not fall on one mode
            samples[mode].append(await one_engine(mode, rate, seconds, tasks))
    figures: dict[str, Any] = {}
    table = []
    for mode in modes:
        results = samples[mode]
        figures[mode] = {}
        for measure in ("commit_to_created_ms", "commit_to_visible_ms"):
            figures[mode][measure] = {
                p: summary([r[measure][p] for r in results]) for p in ("p50", "p95", "p99", "max")
            }
            row = ", ".join(
                f"{p} {figures[mode][measure][p]['median']:.2f}" for p in ("p50", "p95", "p99")
            )
            label = measure.replace("_ms", " (ms)").replace("_", " ")
            table.append((f"{mode}: {label}", f"{row}  (medians of {runs} runs)"))
        for measure in ("fill_rows_per_s", "drain_rows_per_s"):
            figures[mode][measure] = summary([r[measure] for r in results])
            value = figures[mode][measure]
            label = measure.replace("_rows_per_s", " (rows/s)")
            table.append(
                (
                    f"{mode}: {label}",
                    f"{value['median']:,.0f} (range {value['min']:,.0f}-{value['max']:,.0f})",
                )
            )
    await write_result(
        "outbox",
        {
            "modes": {mode: MODES[mode] for mode in modes},
            "rate": rate,
            "seconds": seconds,
            "tasks": tasks,
            "runs": runs,
            "warmup": WARMUP,
            "chunk": CHUNK,
            "workers": 0,
        },
        figures,
        table,
    )
