"""Volume: 10,000 no-op runs through two worker processes; the run list and the event history
must agree with each other and with the work done. Batching keeps Postgres transactions far
below one per run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from taskyard.engine import Engine
from tests.support import LEDGER_TABLE, WorkerProcess

pytestmark = pytest.mark.slow

RUNS = 10_000


async def test_ten_thousand_runs_through_two_worker_processes(
    engine: Engine,
    db_url: str,
    data_dir: Path,
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    await engine.pool.execute(LEDGER_TABLE)
    token = (data_dir / "token").read_text().strip()
    workers = [
        WorkerProcess(engine.url, token, db_url, f"w{i}", tmp_path / f"w{i}.log").start()
        for i in range(2)
    ]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as http:
            for _ in range(200):
                async with http.get("/api/v1/workers") as response:
                    if len(await response.json()) == 2:
                        break
                await asyncio.sleep(0.05)
            flushes_before = engine.persister.flushes
            started = time.monotonic()
            run_ids: list[str] = []
            for start in range(0, RUNS, 1000):
                runs = [{"task": "noop", "input": n} for n in range(start, start + 1000)]
                async with http.post("/api/v1/runs/batch", json={"runs": runs}) as response:
                    assert response.status == 201
                    run_ids += [ref["run_id"] for ref in (await response.json())["runs"]]
            pending = run_ids
            while pending:
                async with http.post(
                    "/api/v1/runs/wait", json={"run_ids": pending, "timeout": 30}
                ) as response:
                    pending = (await response.json())["pending"]
            elapsed = time.monotonic() - started
            await engine.persister.flush()
            flushes = engine.persister.flushes - flushes_before

            listed: dict[str, int] = {}
            cursor = None
            while True:
                params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
                async with http.get("/api/v1/runs", params=params) as response:
                    page = await response.json()
                for run in page["runs"]:
                    listed[run["status"]] = listed.get(run["status"], 0) + 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
    finally:
        for worker in workers:
            worker.kill()
    print(f"{RUNS} runs in {elapsed:.2f}s ({RUNS / elapsed:.0f}/s), {flushes} flushes")
    record_property("runs_per_second", round(RUNS / elapsed))
    assert listed == {"succeeded": RUNS}
    timelines = await engine.pool.fetchval(
        "SELECT count(*) FROM runs WHERE created_at <= assigned_at AND assigned_at <= started_at "
        "AND started_at <= finished_at AND status = 'succeeded' AND attempt = 1"
    )
    assert timelines == RUNS, "every run's row holds its whole timeline, in order"
    assert await engine.pool.fetchval("SELECT count(*) FROM run_events") == 0, (
        "the usual lifecycle costs no event rows"
    )
    async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as http:
        for run_id in run_ids[:: RUNS // 20]:
            async with http.get(f"/api/v1/runs/{run_id}/events") as response:
                kinds = [event["type"] for event in await response.json()]
            assert kinds == ["queued", "assigned", "started", "succeeded"]
    per_worker = await engine.pool.fetch(
        "SELECT worker_id, count(*) AS n FROM runs GROUP BY worker_id"
    )
    assert len(per_worker) == 2, "both workers took part"
    assert flushes < RUNS / 10, "writes are batched"
