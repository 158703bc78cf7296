"""Retention through a crash, from the command line: a tenant given a day's retention by
`taskyard tenant retention`, an engine killed with kill -9 in the middle of deleting its expired
runs, and restarted. Every batch went whole (no run without its events, no events without their
run), nothing unfinished went, and the restarted engine finishes the job."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taskyard.testing import EngineProcess, clean_env
from tests.support import connected, scalar, taskyard, wait_until

pytestmark = pytest.mark.slow

EXPIRED = 40_000
UNFINISHED = 100
# Sweeps every half second; short leases, so the restarted engine takes the tenant and the
# sweep over from the killed one in a second rather than five.
FLAGS = ("--retention-every", "0.5", "--lease-seconds", "1", "--lease-renew", "0.2")

FILL = """
INSERT INTO runs (tenant_id, run_id, task, queue, status, attempt, priority, options,
                  idempotency_key, created_at, queued_at, finished_at, output)
SELECT $1, (left(taskyard_uuid_at(at)::text, 13) || right(gen_random_uuid()::text, 23))::uuid,
       'old', $4, $5, 1, 1, $6::jsonb,
       CASE WHEN i % 10 = 0 AND $5 = 'succeeded' THEN 'key-' || i END,
       at, at, CASE WHEN $5 = 'succeeded' THEN at + interval '1 second' END, '1'
FROM (SELECT $2::timestamptz + i * interval '400 ms' AS at, i FROM generate_series(1, $3) i) s
"""

ORPHANS = """
SELECT (SELECT count(*) FROM run_events e WHERE NOT EXISTS (
            SELECT 1 FROM runs r WHERE r.tenant_id = e.tenant_id AND r.run_id = e.run_id))
     + (SELECT count(*) FROM runs r WHERE r.status = 'succeeded' AND (
            SELECT count(*) FROM run_events e
            WHERE e.tenant_id = r.tenant_id AND e.run_id = r.run_id) <> 2)
     + (SELECT count(*) FROM run_keys k WHERE NOT EXISTS (
            SELECT 1 FROM runs r WHERE r.tenant_id = k.tenant_id AND r.run_id = k.run_id))
"""


def cli(*args: str, db_url: str) -> str:
    done = taskyard(*args, "--database-url", db_url)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_sweep_killed_midway_leaves_whole_runs_and_the_next_finishes(
    db_url: str, tmp_path: Path
) -> None:
    created = cli("tenant", "create", "short-lived", db_url=db_url)
    tenant_id = uuid.UUID(re.search(r"tenant id:\s+(\S+)", created).group(1))  # type: ignore[union-attr]
    said = cli("tenant", "retention", "--tenant", str(tenant_id), "--days", "1", db_url=db_url)
    assert "keeps its history for 1 days" in said
    neither = taskyard("tenant", "retention", "--tenant", str(tenant_id), "--database-url", db_url)
    assert neither.returncode == 2
    assert "give either --days or --engine-default" in neither.stderr
    unknown = taskyard(
        "tenant",
        "retention",
        "--tenant",
        str(uuid.uuid4()),
        "--days",
        "2",
        "--database-url",
        db_url,
    )
    assert unknown.returncode == 1
    assert "no tenant with id" in unknown.stderr

    # Three days ago: 40,000 finished runs (two state changes each, one in ten keyed), and a
    # hundred still queued in a queue no worker serves.
    day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0)
    async with connected(db_url) as conn:
        await conn.execute("SELECT taskyard_add_history_partitions($1, 0)", day.date())
        await conn.execute(FILL, tenant_id, day, EXPIRED, "default", "succeeded", "{}")
        # (a schedule timeout of their own: waiting three days would time them out at once)
        waits = '{"schedule_timeout": 10000000}'
        # (in milliseconds of their own: a run goes with everything of its millisecond)
        later = day + timedelta(milliseconds=200)
        await conn.execute(FILL, tenant_id, later, UNFINISHED, "nowhere", "queued", waits)
        await conn.execute(
            "INSERT INTO run_keys (tenant_id, key, run_id) "
            "SELECT tenant_id, idempotency_key, run_id FROM runs WHERE idempotency_key IS NOT NULL"
        )
        for _ in range(2):
            await conn.execute(
                "INSERT INTO run_events (tenant_id, run_id, at, attempt, type) "
                "SELECT tenant_id, run_id, created_at, 1, 'queued' FROM runs "
                "WHERE status = 'succeeded'"
            )
    remaining = "SELECT count(*) FROM runs WHERE status = 'succeeded'"

    engine = EngineProcess(
        [*FLAGS, "--database-url", db_url, "--data-dir", str(tmp_path / "d")],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    try:
        deadline = time.monotonic() + 60
        while (left := await scalar(db_url, remaining)) == EXPIRED:
            assert time.monotonic() < deadline, "the sweep did not start"
    finally:
        engine.kill()  # SIGKILL
    assert 0 < left < EXPIRED, f"killed after {EXPIRED - left} runs went: not in the middle"
    assert await scalar(db_url, ORPHANS) == 0
    assert await scalar(db_url, "SELECT count(*) FROM runs WHERE status = 'queued'") == UNFINISHED

    engine = EngineProcess(
        [*FLAGS, "--database-url", db_url, "--data-dir", str(tmp_path / "d")],
        clean_env(),
        tmp_path / "engine2.log",
    ).start()
    try:

        async def all_gone() -> bool:
            return await scalar(db_url, remaining) == 0

        await wait_until(all_gone, 60, "the restarted engine to delete the rest")
    finally:
        assert engine.terminate() == 0
    assert await scalar(db_url, ORPHANS) == 0
    assert await scalar(db_url, "SELECT count(*) FROM run_events") == 0
    assert await scalar(db_url, "SELECT count(*) FROM run_keys") == 0
    assert await scalar(db_url, "SELECT count(*) FROM runs WHERE status = 'queued'") == UNFINISHED
