"""Latency on an idle engine: a steady rate of single triggers; trigger -> start and
trigger -> result percentiles. Times are taken in the client (when it sends the trigger and
when it learns the result) and inside the task (when it starts); all on one machine clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench.harness import engine_setup, percentiles, summary, write_result


async def one(http: aiohttp.ClientSession, samples: list[tuple[float, float]]) -> None:
    sent = time.time()
    async with http.post("/api/v1/runs", json={"task": "stamp", "input": sent}) as response:
        run_id = (await response.json())["run_id"]
    async with http.get(f"/api/v1/runs/{run_id}/result", params={"timeout": "30"}) as response:
        view = await response.json()
    received = time.time()
    if view["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} ended {view['status']}")
    samples.append((view["output"] - sent, received - sent))


async def steady(
    http: aiohttp.ClientSession, rate: float, seconds: float
) -> list[tuple[float, float]]:
    """Open loop: a trigger every 1/rate seconds, whatever the previous ones are doing."""
    samples: list[tuple[float, float]] = []
    interval = 1 / rate
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = []
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
        pending.append(asyncio.create_task(one(http, samples)))
    await asyncio.gather(*pending)
    return samples


async def main(rate: float, seconds: float, runs: int) -> None:
    results: list[dict[str, Any]] = []
    async with (
        engine_setup() as setup,
        aiohttp.ClientSession(
            base_url=setup.engine.url,
            headers=setup.headers,
            connector=aiohttp.TCPConnector(limit=0),
        ) as http,
    ):
        workers = setup.workers(1, 200)
        try:
            await setup.wait_for_workers(http, 1)
            await steady(http, rate, min(5.0, seconds))  # warm-up
            for _ in range(runs):
                samples = await steady(http, rate, seconds)
                results.append(
                    {
                        "trigger_to_start_ms": percentiles([s[0] * 1000 for s in samples]),
                        "trigger_to_result_ms": percentiles([s[1] * 1000 for s in samples]),
                    }
                )
        finally:
            workers.stop()
    figures: dict[str, Any] = {}
    table = []
    for measure in ("trigger_to_start_ms", "trigger_to_result_ms"):
        figures[measure] = {
            p: summary([r[measure][p] for r in results]) for p in ("p50", "p95", "p99", "max")
        }
        row = ", ".join(f"{p} {figures[measure][p]['median']:.2f}" for p in ("p50", "p95", "p99"))
        table.append(
            (measure.replace("_ms", " (ms)").replace("_", " "), f"{row}  (medians of {runs} runs)")
        )
    await write_result(
        "latency", {"rate": rate, "seconds": seconds, "runs": runs, "workers": 1}, figures, table
    )
