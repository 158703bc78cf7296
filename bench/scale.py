"""Scale: a large backlog queued with no worker. Trigger rate, engine memory, the time a restart
takes to serve the queue again, then the drain rate with workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg

from bench.harness import (
    Setup,
    engine_setup,
    process_memory,
    summary,
    trigger,
    write_result,
)


async def count(db_url: str, status: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM runs WHERE status = $1", status))
    finally:
        await conn.close()


async def until(check: Any, timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(every)


async def one_run(setup: Setup, tasks: int, workers: int) -> dict[str, float]:
    async with aiohttp.ClientSession(
        base_url=setup.engine.url, headers=setup.headers, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        started = time.perf_counter()
        await trigger(http, "noop", tasks, batch=5000, concurrency=2)
        trigger_rate = tasks / (time.perf_counter() - started)
    memory = process_memory(setup.engine.pid)

    setup.engine.terminate()
    restarted = time.perf_counter()
    setup.engine.start(wait=300)
    serving = time.perf_counter() - restarted
    after_restart = process_memory(setup.engine.pid)

    pool = setup.workers(workers)
    try:
        async with aiohttp.ClientSession(base_url=setup.engine.url, headers=setup.headers) as http:
            await setup.wait_for_workers(http, workers)
        first_done = time.perf_counter()
        await until(lambda: _any_succeeded(setup.db_url), 120, every=0.05)
        resumed = time.perf_counter() - restarted
        drain_started = time.perf_counter()
        await until(lambda: _all_succeeded(setup.db_url, tasks), 3600, every=1)
        drain_rate = tasks / (time.perf_counter() - drain_started)
        del first_done
    finally:
        pool.stop()
    peak = process_memory(setup.engine.pid)["peak_rss"]
    return {
        "trigger_rate": trigger_rate,
        "rss_queued_mb": memory["rss"] / 2**20,
        "peak_rss_queued_mb": memory["peak_rss"] / 2**20,
        "rss_after_restart_mb": after_restart["rss"] / 2**20,
        "restart_to_healthy_s": serving,
        "restart_to_first_result_s": resumed,
        "drain_rate": drain_rate,
        "peak_rss_draining_mb": peak / 2**20,
    }


async def _any_succeeded(db_url: str) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        return bool(
            await conn.fetchval("SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'succeeded')")
        )
    finally:
        await conn.close()


async def _all_succeeded(db_url: str, tasks: int) -> bool:
    return await count(db_url, "succeeded") >= tasks


async def main(tasks: int, workers: int, runs: int) -> None:
    samples = []
    for _ in range(runs):
        async with engine_setup() as setup:
            samples.append(await one_run(setup, tasks, workers))
    figures = {key: summary([s[key] for s in samples]) for key in samples[0]}
    units = {
        "trigger_rate": "runs/s",
        "drain_rate": "runs/s",
        "restart_to_healthy_s": "s",
        "restart_to_first_result_s": "s",
    }
    table = [
        (
            key,
            f"{value['median']:.1f} {units.get(key, 'MiB')}"
            + (f" (range {value['min']:.1f}-{value['max']:.1f})" if runs > 1 else ""),
        )
        for key, value in figures.items()
    ]
    await write_result("scale", {"tasks": tasks, "workers": workers, "runs": runs}, figures, table)
