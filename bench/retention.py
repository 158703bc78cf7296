"""Retention: what dropping a day of N finished runs (default 10,000,000) costs, against deleting
runs in batches, while the engine serves.

A fresh database gets, for a day twelve days ago, its partitions and N finished runs of the
`default` tenant (in the shape the engine writes them), each with E state changes (default 2),
one run in ten with an idempotency key; and, for a second tenant with a retention of one day,
D runs (default 200,000) three days old, which only batched deletes remove. The engine is
stopped while the rows are copied, then started; a client triggers one run at a time
throughout, timing each. Then two sweeps of the engine's retention code run against the
database: the first drops the old day (one read of the day's runs, to see that none is
unfinished, then the drop), the second deletes the short-lived tenant's runs by batches.
Reported: the time of each, the size of what went, and the triggers' latency before and during.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from bench.dashboard import OPTIONS, uuid7_at
from bench.harness import engine_setup, percentiles, write_result
from taskyard.services.retention import SINGLETON, Retention
from taskyard.store.leases import LeaseRepository
from taskyard.store.retention import RetentionRepository

CHUNK = 50_000
RUN_COLUMNS = (
    "tenant_id",
    "run_id",
    "task",
    "queue",
    "status",
    "attempt",
    "priority",
    "options",
    "output",
    "idempotency_key",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
)
EVENT_COLUMNS = ("tenant_id", "run_id", "at", "attempt", "type")


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def fill(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    day: date,
    total: int,
    events: int,
    keyed: bool,
) -> None:
    """`total` succeeded runs spread over `day`, each with `events` state changes."""
    start = day_start(day)
    await conn.execute("SELECT taskyard_add_history_partitions($1, 0)", day)
    for first in range(0, total, CHUNK):
        runs, changes = [], []
        for n in range(first, min(first + CHUNK, total)):
            created = start + timedelta(days=1) * (n / total)
            run_id = uuid7_at(created)
            key = f"k{n}" if keyed and n % 10 == 0 else None
            finished = created + timedelta(milliseconds=25)
            began = created + timedelta(milliseconds=5)
            row = (tenant_id, run_id, "report", "default", "succeeded", 1, 2, OPTIONS, str(n))
            runs.append((*row, key, created, created, began, finished))
            changes += [(tenant_id, run_id, finished, 1, "succeeded")] * events
        await conn.copy_records_to_table("runs", records=runs, columns=RUN_COLUMNS)
        await conn.copy_records_to_table("run_events", records=changes, columns=EVENT_COLUMNS)
        keys = [(row[0], row[9], row[1]) for row in runs if row[9] is not None]
        if keys:
            await conn.copy_records_to_table(
                "run_keys", records=keys, columns=("tenant_id", "key", "run_id")
            )


async def day_size(conn: asyncpg.Connection, day: date) -> int:
    total: int = await conn.fetchval(
        "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c "
        "WHERE c.relname = ANY ($1)",
        [f"{table}_p{day:%Y%m%d}" for table in ("runs", "run_events", "run_logs", "durable_log")],
    )
    return total


class Triggers:
    """One trigger at a time, timed, until stopped; the samples in phases."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.phase = "before"
        self.samples: dict[str, list[float]] = {}
        self.errors = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(self.url, headers=headers) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                async with http.post("/api/v1/runs", json={"task": "noop"}) as response:
                    await response.read()
                    if response.status != 201:
                        self.errors += 1
                elapsed = (time.perf_counter() - started) * 1000
                self.samples.setdefault(self.phase, []).append(elapsed)
                await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


async def main(total: int, events: int, short_lived: int) -> None:
    today = datetime.now(UTC).date()
    old_day, recent_day = today - timedelta(days=12), today - timedelta(days=3)
    figures: dict[str, Any] = {}
    async with engine_setup("--retention-every", "86400") as setup:
        setup.engine.terminate()  # copied with the engine stopped, as the dashboard's
        conn = await asyncpg.connect(setup.db_url)
        try:
            tenant_id = await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = 'default'")
            short_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO tenants (tenant_id, name, retention_days) VALUES ($1, 'short', 1)",
                short_id,
            )
            started = time.perf_counter()
            await fill(conn, tenant_id, old_day, total, events, keyed=True)
            await fill(conn, short_id, recent_day, short_lived, events, keyed=False)
            await conn.execute("VACUUM ANALYZE")
            figures["fill_seconds"] = time.perf_counter() - started
            figures["day_bytes"] = await day_size(conn, old_day)
        finally:
            await conn.close()
        setup.engine.start(wait=300)
        triggers = Triggers(setup.engine.url, setup.token)
        loading = asyncio.create_task(triggers.run())
        await asyncio.sleep(5)
        pool = await asyncpg.create_pool(setup.db_url, min_size=2, max_size=4)
        assert pool is not None
        try:
            leases = LeaseRepository(pool, uuid.uuid4(), 3600.0)
            assert await leases.hold_singleton(SINGLETON)  # the engine's own sweep stays off
            retention = Retention(
                RetentionRepository(pool), leases, default_days=7.0, every=86400.0
            )
            # First as of three days ago: the old day is past the longest retention (7 days),
            # the short-lived tenant's runs are not yet past theirs (1 day). Then as of now.
            triggers.phase = "dropping a day"
            started = time.perf_counter()
            first = await retention.sweep(day_start(recent_day))
            figures["drop_seconds"] = time.perf_counter() - started
            figures["dropped"] = first.dropped
            triggers.phase = "deleting by batches"
            started = time.perf_counter()
            second = await retention.sweep()
            figures["batched_seconds"] = time.perf_counter() - started
            figures["batched_runs"] = second.runs_deleted
            triggers.phase = "after"
            await asyncio.sleep(3)
        finally:
            triggers.stop()
            await loading
            await pool.close()
    figures["trigger_ms"] = {phase: percentiles(s) for phase, s in triggers.samples.items()}
    figures["trigger_errors"] = triggers.errors
    per_run = figures["batched_seconds"] / max(1, figures["batched_runs"])
    table = [
        (
            f"{total:,} runs ({events} state changes each) copied in",
            f"{figures['fill_seconds']:.0f} s",
        ),
        ("the day's partitions on disk", f"{figures['day_bytes'] / 2**30:.2f} GiB"),
        (
            "sweep dropping the day (its read + drop)",
            f"{figures['drop_seconds']:.2f} s ({len(first.dropped)} partitions)",
        ),
        (
            f"sweep deleting {figures['batched_runs']:,} runs by batches",
            f"{figures['batched_seconds']:.2f} s ({per_run * 1e6:.0f} us a run: "
            f"{per_run * total / 60:.1f} min for {total:,})",
        ),
    ]
    for phase, p in figures["trigger_ms"].items():
        table.append((f"trigger latency, {phase}", f"p50 {p['p50']:.1f} ms, max {p['max']:.1f} ms"))
    table.append(("trigger errors", str(triggers.errors)))
    settings = {"runs": total, "events_per_run": events, "short_lived": short_lived}
    await write_result("retention", settings, figures, table)
