"""Dashboard: how long the engine takes to answer its pages with a big history. N finished runs
(default 1,000,000) are copied into a fresh database in the shape the engine writes them (UUIDv7
ids over the last 30 days, 20 tasks, 1,000 customers in metadata, 5 % failed, 0.1 % timed out,
the rest succeeded) plus 1,000 queued, the tables analysed, an engine started on it; then each
page is fetched R times by one client on the same machine, and the wall time from request to the
last byte is reported (an upper bound of the server's time), p50/p95/max in ms.

Pages: the runs page (newest 50), a second page by its cursor, a page 100 pages deep, filtered by
a common status (failed), a rare one (timed out), one no run has (cancelled: every row of the
tenant is looked at), by task, by a customer's metadata, by a time window a week ago, by the
worker of the latest attempt (one of 50), a run's page, and the queues page."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import orjson

from bench.harness import engine_setup, percentiles, write_result

TASKS = [f"report-{n}" for n in range(20)]
CUSTOMERS = 1000
WORKERS = [uuid.UUID(int=n + 1) for n in range(50)]  # a finished run's last worker
CHUNK = 50_000  # rows copied at a time
OPTIONS = orjson.dumps({"schedule_timeout": 3600.0}).decode()
COLUMNS = (
    "tenant_id",
    "run_id",
    "task",
    "queue",
    "status",
    "attempt",
    "priority",
    "options",
    "input",
    "output",
    "error",
    "metadata",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "worker_id",
)


def uuid7_at(moment: datetime) -> uuid.UUID:
    """A UUIDv7 whose time is `moment` (the engine's ids are UUIDv7 taken when a run is made)."""
    millis = int(moment.timestamp() * 1000)
    random = int.from_bytes(os.urandom(10)) >> 6  # 74 bits
    high = ((millis & 0xFFFF_FFFF_FFFF) << 16) | (0x7 << 12) | (random >> 62)
    return uuid.UUID(int=(high << 64) | (0b10 << 62) | (random & ((1 << 62) - 1)))


def status_of(n: int) -> str:
    if n % 1000 == 7:
        return "timed_out"
    if n % 20 == 3:
        return "failed"
    return "succeeded"


def rows(tenant_id: uuid.UUID, first: int, count: int, total: int, end: datetime) -> list[Any]:
    span = timedelta(days=30)
    made = []
    for n in range(first, first + count):
        created = end - span + span * (n / total)
        status = status_of(n)
        error = (
            orjson.dumps({"type": "ValueError", "message": f"row {n} is bad"}).decode()
            if status == "failed"
            else None
        )
        made.append(
            (
                tenant_id,
                uuid7_at(created),
                TASKS[n % len(TASKS)],
                "default",
                status,
                1,
                2,
                OPTIONS,
                str(n),
                str(n) if status == "succeeded" else None,
                error,
                orjson.dumps({"customer": f"c{n % CUSTOMERS}"}).decode(),
                created,
                created,
                created + timedelta(milliseconds=5),
                created + timedelta(milliseconds=25),
                WORKERS[n % len(WORKERS)],
            )
        )
    return made


async def fill(db_url: str, total: int) -> tuple[uuid.UUID, datetime]:
    """`total` finished runs and 1,000 queued ones of the `default` tenant; returns the
    tenant's id and the newest run's time."""
    conn = await asyncpg.connect(db_url)
    try:
        tenant_id = await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = 'default'")
        end = datetime.now(UTC)
        # The days' partitions, as an engine running through those days made them.
        await conn.execute(
            "SELECT taskyard_add_history_partitions($1, 31)", (end - timedelta(days=31)).date()
        )
        for first in range(0, total, CHUNK):
            await conn.copy_records_to_table(
                "runs",
                records=rows(tenant_id, first, min(CHUNK, total - first), total, end),
                columns=COLUMNS,
            )
        queued = [
            (*row[:4], "queued", *row[5:9], None, None, *row[11:14], None, None, None)
            for row in rows(tenant_id, total, 1000, total + 1000, end + timedelta(seconds=1))
        ]
        await conn.copy_records_to_table("runs", records=queued, columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE runs")
        return tenant_id, end
    finally:
        await conn.close()


async def timed(http: aiohttp.ClientSession, path: str, repeats: int) -> dict[str, float]:
    """Percentiles of the page's time in ms, and the runs it listed (`rows`)."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        async with http.get(path, allow_redirects=False) as response:
            page = await response.text()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples) | {"rows": page.count("<tr data-run=")}


async def deep_cursor(db_url: str, tenant_id: uuid.UUID, pages: int) -> str:
    conn = await asyncpg.connect(db_url)
    try:
        run_id = await conn.fetchval(
            "SELECT run_id FROM runs WHERE tenant_id = $1 ORDER BY run_id DESC OFFSET $2 LIMIT 1",
            tenant_id,
            pages * 50 - 1,
        )
        return str(run_id)
    finally:
        await conn.close()


async def main(total: int, repeats: int) -> None:
    async with engine_setup() as setup:
        setup.engine.terminate()
        started = time.perf_counter()
        tenant_id, end = await fill(setup.db_url, total)
        filled = time.perf_counter() - started
        setup.engine.start(wait=300)
        week_ago = end - timedelta(days=7)
        window = {
            "since": week_ago.strftime("%Y-%m-%dT%H:%M:%S"),
            "until": (week_ago + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        }
        second = await deep_cursor(setup.db_url, tenant_id, 1)
        deep = await deep_cursor(setup.db_url, tenant_id, 100)
        one_run = await deep_cursor(setup.db_url, tenant_id, total // 100)  # mid-history
        pages = {
            "runs page (newest 50)": "/dashboard/runs",
            "second page (cursor)": f"/dashboard/runs?cursor={second}",
            "100 pages deep (cursor)": f"/dashboard/runs?cursor={deep}",
            "status failed (5 %)": "/dashboard/runs?status=failed",
            "status timed out (0.1 %)": "/dashboard/runs?status=timed_out",
            "status cancelled (none: the worst case)": "/dashboard/runs?status=cancelled",
            "task (1 in 20)": "/dashboard/runs?task=report-7",
            "metadata customer (1 in 1,000)": "/dashboard/runs?metadata=customer%3Dc42",
            "an hour a week ago": f"/dashboard/runs?{urlencode(window)}",
            "worker (1 in 50)": f"/dashboard/runs?worker={WORKERS[7]}",
            "queues page (1,000 queued)": "/dashboard/queues",
            "a run's page": f"/dashboard/runs/{one_run}",
        }
        headers = {"Cookie": f"taskyard_session={setup.token}"}
        figures: dict[str, Any] = {"fill_seconds": filled}
        async with aiohttp.ClientSession(base_url=setup.engine.url, headers=headers) as http:
            for path in pages.values():  # warm: plans and caches, as a dashboard in use has
                await timed(http, path, 2)
            for label, path in pages.items():
                figures[label] = await timed(http, path, repeats)
    table = [(f"{total:,} runs copied in", f"{filled:.1f} s")]
    table += [
        (
            label,
            f"p50 {f['p50']:.1f} ms, p95 {f['p95']:.1f} ms, max {f['max']:.1f} ms "
            f"({f['rows']} runs listed)",
        )
        for label, f in figures.items()
        if isinstance(f, dict)
    ]
    await write_result(
        "dashboard", {"runs": total, "repeats": repeats, "pages": pages}, figures, table
    )
