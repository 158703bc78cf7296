"""DAG workflows: a 20-step chain and a 1,000-wide fan-out/fan-in, each triggered and waited for
one at a time on an otherwise idle engine. The added latency per DAG step is what each step after
the first adds to the chain's trigger -> result time: (chain - single task) / (steps - 1), with a
single no-op task's trigger -> result time measured in the same run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench.harness import Setup, engine_setup, summary, write_result


async def timed(http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> float:
    """Seconds from the trigger to the result (the run's outcome committed)."""
    started = time.perf_counter()
    async with http.post(path, json=body) as response:
        if response.status != 201:
            raise RuntimeError(f"trigger failed: {response.status} {await response.text()}")
        run_id = (await response.json())["run_id"]
    async with http.get(f"/api/v1/runs/{run_id}/result", params={"timeout": "120"}) as response:
        view = await response.json()
    elapsed = time.perf_counter() - started
    if view["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} ended {view['status']}: {view.get('error')}")
    return elapsed


async def step_count(http: aiohttp.ClientSession, name: str) -> int:
    """The number of steps of a workflow bench/worker.py registers as it connects."""
    for _ in range(600):
        async with http.get(f"/api/v1/workflows/{name}") as response:
            if response.status == 200:
                return len((await response.json())["definition"]["steps"])
        await asyncio.sleep(0.05)
    raise RuntimeError(f"workflow {name!r} was not registered")


async def measure(
    http: aiohttp.ClientSession, repeats: int, chain_steps: int, fan_steps: int
) -> dict[str, float]:
    single = sorted(
        [await timed(http, "/api/v1/runs", {"task": "noop", "input": 0}) for _ in range(repeats)]
    )
    chain = sorted(
        [
            await timed(http, "/api/v1/workflows/bench-chain/runs", {"input": 0})
            for _ in range(repeats)
        ]
    )
    fan = await timed(http, "/api/v1/workflows/bench-fan/runs", {"input": 0})
    single_s, chain_s = single[len(single) // 2], chain[len(chain) // 2]
    return {
        "single_task_ms": single_s * 1000,
        "chain_ms": chain_s * 1000,
        "chain_per_step_ms": chain_s / chain_steps * 1000,
        "added_per_step_ms": (chain_s - single_s) / (chain_steps - 1) * 1000,
        "fan_ms": fan * 1000,
        "fan_steps_per_second": fan_steps / fan,
    }


async def run(setup: Setup, runs: int, repeats: int) -> tuple[int, int, list[dict[str, float]]]:
    async with aiohttp.ClientSession(
        base_url=setup.engine.url, headers=setup.headers, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        workers = setup.workers(1, 200, WORKFLOWS="1")
        try:
            await setup.wait_for_workers(http, 1)
            shape = (await step_count(http, "bench-chain"), await step_count(http, "bench-fan"))
            await measure(http, 2, *shape)  # warm-up
            return (*shape, [await measure(http, repeats, *shape) for _ in range(runs)])
        finally:
            workers.stop()


async def main(runs: int, repeats: int) -> None:
    async with engine_setup() as setup:
        chain, fan, samples = await run(setup, runs, repeats)
    figures: dict[str, Any] = {key: summary([s[key] for s in samples]) for key in samples[0]}
    table = [
        ("single no-op task, trigger -> result", f"{figures['single_task_ms']['median']:.1f} ms"),
        (
            f"{chain}-step chain",
            f"{figures['chain_ms']['median']:.1f} ms "
            f"({figures['chain_per_step_ms']['median']:.2f} ms a step)",
        ),
        ("added latency per DAG step", f"{figures['added_per_step_ms']['median']:.2f} ms"),
        (
            f"{fan - 2}-wide fan-out/fan-in",
            f"{figures['fan_ms']['median']:.0f} ms "
            f"({figures['fan_steps_per_second']['median']:.0f} steps/s)",
        ),
    ]
    settings = {"chain_steps": chain, "fan_steps": fan, "runs": runs, "repeats": repeats}
    await write_result("dag", settings, figures, table)
