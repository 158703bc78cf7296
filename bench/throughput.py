"""Throughput: no-op runs triggered in batches, from the first trigger to the last result
committed; with the Postgres cost of each run (pgcost)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench.harness import (
    Setup,
    engine_setup,
    postgres_counters,
    summary,
    trigger,
    wait_all,
    write_result,
)


async def measure(
    setup: Setup, http: aiohttp.ClientSession, tasks: int, first: int
) -> dict[str, float]:
    before = await postgres_counters(setup.db_url)
    started = time.perf_counter()
    run_ids = await trigger(http, "noop", tasks, first=first)
    await wait_all(http, run_ids)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(1.5)  # backends publish their transaction counts about once a second
    after = await postgres_counters(setup.db_url)
    return {
        "tasks_per_second": tasks / elapsed,
        "seconds": elapsed,
        "transactions_per_task": (after["transactions"] - before["transactions"]) / tasks,
        "wal_bytes_per_task": (after["wal"] - before["wal"]) / tasks,
    }


async def run_throughput(
    tasks: int, workers: list[int], runs: int, slots: int, warmup: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for count in workers:
        async with (
            engine_setup() as setup,
            aiohttp.ClientSession(
                base_url=setup.engine.url,
                headers=setup.headers,
                timeout=aiohttp.ClientTimeout(total=None),
            ) as http,
        ):
            pool = setup.workers(count, slots)
            try:
                await setup.wait_for_workers(http, count)
                await wait_all(http, await trigger(http, "noop", warmup))
                samples = [
                    await measure(setup, http, tasks, first=(i + 1) * tasks) for i in range(runs)
                ]
            finally:
                pool.stop()
        figures[f"{count}_workers"] = {
            key: summary([s[key] for s in samples]) for key in samples[0]
        }
    return figures


async def main(
    tasks: int, workers: list[int], runs: int, slots: int, warmup: int, workload: str
) -> None:
    figures = await run_throughput(tasks, workers, runs, slots, warmup)
    table = []
    for key, values in figures.items():
        rate = values["tasks_per_second"]
        table.append(
            (
                f"{key}: tasks/s",
                f"{rate['median']:.0f} (range {rate['min']:.0f}-{rate['max']:.0f}, {runs} runs)",
            )
        )
        tx = values["transactions_per_task"]["median"]
        wal = values["wal_bytes_per_task"]["median"]
        table.append((f"{key}: Postgres transactions/task", f"{tx:.4f}"))
        table.append((f"{key}: WAL bytes/task", f"{wal:.0f}"))
    await write_result(
        workload,
        {"tasks": tasks, "workers": workers, "runs": runs, "slots": slots, "warmup": warmup},
        figures,
        table,
    )
