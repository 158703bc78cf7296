"""kill -9 of the engine while workflow runs progress: after a restart every run finishes and no
step is created twice (each step of each run has exactly one row)."""

from __future__ import annotations

import json

import aiohttp
import asyncpg
import pytest

from tests.e2e.conftest import Deploy
from tests.e2e.test_recovery import execute, scalar, wait_until
from tests.support import LEDGER_TABLE

pytestmark = pytest.mark.slow

RUNS = 300
STEPS = ("first", "left", "right", "join")


async def test_engine_killed_during_dag_progression_finishes_every_run_once(
    db_url: str, deploy: Deploy
) -> None:
    await execute(db_url, LEDGER_TABLE)
    deployment = deploy("--heartbeat-interval", "0.5", "--heartbeat-timeout", "3")
    engine, headers = deployment.engine, deployment.headers
    deployment.worker("dag", slots=40, sleep=0.02)
    async with aiohttp.ClientSession(base_url=engine.url) as http:
        await wait_until(lambda: _registered(http, headers), 30, "the workflow")
        async with http.post(
            "/api/v1/workflows/ledger-dag/runs/batch",
            headers=headers,
            json={"runs": [{"input": n} for n in range(RUNS)]},
        ) as response:
            assert response.status == 201, await response.text()
            run_ids = [ref["run_id"] for ref in (await response.json())["runs"]]
    # Kill once the DAGs are well under way: some runs done, others mid-diamond.
    await wait_until(lambda: _rows_at_least(db_url, RUNS * 2), 60, "steps to be under way")
    engine.kill()
    steps_before = await scalar(db_url, "SELECT count(*) FROM runs WHERE step IS NOT NULL")
    engine.start()
    await wait_until(lambda: _workflows_succeeded(db_url, RUNS), 180, "every workflow run")
    conn = await asyncpg.connect(db_url)
    try:
        per_run = await conn.fetch(
            "SELECT workflow_run_id, count(*) AS steps, count(DISTINCT step) AS distinct_steps, "
            "bool_and(status = 'succeeded') AS ok FROM runs WHERE workflow_run_id IS NOT NULL "
            "GROUP BY workflow_run_id"
        )
        outputs = await conn.fetch("SELECT output FROM runs WHERE kind = 'workflow'")
        done = {row["n"] for row in await conn.fetch("SELECT DISTINCT n FROM ledger")}
        duplicates = await conn.fetchval(
            "SELECT coalesce(sum(times - 1), 0) FROM "
            "(SELECT count(*) AS times FROM ledger GROUP BY n) t"
        )
    finally:
        await conn.close()
    print(f"dag kill -9: {steps_before} step rows before the kill, ledger duplicates {duplicates}")
    assert {str(row["workflow_run_id"]) for row in per_run} == set(run_ids)
    assert all(row["steps"] == row["distinct_steps"] == len(STEPS) for row in per_run)
    assert all(row["ok"] for row in per_run)
    expected = {n * 10 + step for n in range(RUNS) for step in range(1, 5)}
    assert expected - done == set()  # every step of every run did its work
    # first = 10n+1, left = 10n+2 + first, right = 10n+3 + first, join = left + right
    for row in outputs:
        output = json.loads(row["output"])
        assert output["join"] == 4 * output["first"] + 3


async def _registered(http: aiohttp.ClientSession, headers: dict[str, str]) -> bool:
    async with http.get("/api/v1/workflows/ledger-dag", headers=headers) as response:
        return response.status == 200


async def _rows_at_least(db_url: str, count: int) -> bool:
    return await scalar(db_url, "SELECT count(*) FROM ledger") >= count


async def _workflows_succeeded(db_url: str, count: int) -> bool:
    return (
        await scalar(
            db_url, "SELECT count(*) FROM runs WHERE kind = 'workflow' AND status = 'succeeded'"
        )
        >= count
    )
